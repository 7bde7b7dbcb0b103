/* Loads one MetaGraph of a SavedModel through the TensorFlow C API, the loader TF Serving uses,
 * and optionally runs one float32 vector through it.
 *
 *   run_saved_model DIR TAG[,TAG...] [INPUT_TENSOR OUTPUT_TENSOR VALUE...]
 *
 * Prints "loaded" after a successful load, then one output value per line. Any TensorFlow
 * error is printed to stderr with the step that failed, and the exit code is 1.
 *
 * OP_LIBRARIES, if set, is a colon-separated list of custom op libraries (.so) loaded with
 * TF_LoadLibrary first, as a server must for a graph using ops TensorFlow does not define.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

static int fail(const char *step, TF_Status *status) {
  fprintf(stderr, "%s: %s\n", step, TF_Message(status));
  return 1;
}

static void no_op_deallocator(void *data, size_t length, void *arg) {}

/* "name:index" -> the graph's output; NULL if no operation has that name. */
static TF_Output tensor_by_name(TF_Graph *graph, const char *tensor_name) {
  char op_name[512];
  int index = 0;
  const char *colon = strrchr(tensor_name, ':');
  size_t length = colon ? (size_t)(colon - tensor_name) : strlen(tensor_name);
  if (length >= sizeof op_name) length = sizeof op_name - 1;
  memcpy(op_name, tensor_name, length);
  op_name[length] = '\0';
  if (colon) index = atoi(colon + 1);
  TF_Output output = {TF_GraphOperationByName(graph, op_name), index};
  return output;
}

int main(int argc, char **argv) {
  if (argc < 3 || argc == 4) {
    fprintf(stderr, "usage: %s DIR TAG[,TAG...] [INPUT_TENSOR OUTPUT_TENSOR VALUE...]\n", argv[0]);
    return 2;
  }
  const char *tags[16];
  int tag_count = 0;
  char *tag_list = strdup(argv[2]);
  for (char *tag = strtok(tag_list, ","); tag && tag_count < 16; tag = strtok(NULL, ","))
    tags[tag_count++] = tag;

  TF_Status *status = TF_NewStatus();
  const char *libraries = getenv("OP_LIBRARIES");
  if (libraries && *libraries) {
    char *library_list = strdup(libraries);
    for (char *path = strtok(library_list, ":"); path; path = strtok(NULL, ":")) {
      TF_LoadLibrary(path, status);
      if (TF_GetCode(status) != TF_OK) return fail("load library", status);
    }
    free(library_list);
  }
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  /* ConfigProto{allow_soft_placement: true}: field 7, varint 1. A GPU-pinned graph then runs
   * on a CPU-only host, as TF Serving configures it. */
  const unsigned char soft_placement[] = {0x38, 0x01};
  TF_SetConfig(options, soft_placement, sizeof soft_placement, status);
  if (TF_GetCode(status) != TF_OK) return fail("config", status);

  TF_Session *session =
      TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, tag_count, graph, NULL, status);
  if (TF_GetCode(status) != TF_OK) return fail("load", status);
  printf("loaded\n");

  if (argc > 4) {
    TF_Output input = tensor_by_name(graph, argv[3]);
    TF_Output output = tensor_by_name(graph, argv[4]);
    if (!input.oper || !output.oper) {
      fprintf(stderr, "run: no tensor %s in the graph\n", input.oper ? argv[4] : argv[3]);
      return 1;
    }
    int64_t count = argc - 5;
    float *values = malloc(sizeof(float) * count);
    for (int64_t i = 0; i < count; ++i) values[i] = strtof(argv[5 + i], NULL);
    TF_Tensor *feed = TF_NewTensor(TF_FLOAT, &count, 1, values, sizeof(float) * count,
                                   no_op_deallocator, NULL);
    TF_Tensor *result = NULL;
    TF_SessionRun(session, NULL, &input, &feed, 1, &output, &result, 1, NULL, 0, NULL, status);
    if (TF_GetCode(status) != TF_OK) return fail("run", status);
    if (TF_TensorType(result) != TF_FLOAT) {
      fprintf(stderr, "run: output is not float32\n");
      return 1;
    }
    const float *answer = TF_TensorData(result);
    for (size_t i = 0; i < TF_TensorByteSize(result) / sizeof(float); ++i)
      printf("%.6f\n", answer[i]);
    TF_DeleteTensor(result);
    TF_DeleteTensor(feed);
    free(values);
  }

  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  free(tag_list);
  return 0;
}
