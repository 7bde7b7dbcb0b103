"""Train graphs of an imported source, their gradients from TensorFlow's C++ registry.

Built in Python, a train variant imports the source's computation op by op (a Python
`Operation` per node) and differentiates it with TF1's `tf.gradients` (a Python gradient
function per op): most of a train variant's cost. Here everything around the computation
is the Python path's own (`graphs.build_variant_graph`: placeholders, variables, the loss,
the optimizer's `apply_gradients` with its slots, the global step, the train op and its
collections, the signatures, the init op), run on a stand-in: the computation cut down to
what the Python path reads of it besides its outputs' values (the chain from each output
through pass-through ops to a softmax, which the built-in losses read the logits from,
and the state updates, which gate the step), every other tensor those read a
`Placeholder` of the same dtype and shape, and each variable's gradient its own read (a
tensor of that dtype and shape the graph has already). The computation is then spliced in
under the same names, the gradients of the loss with respect to the variables' reads added
by `TF_AddGradientsWithPrefix` (builder/c_graph.py) on the C API graph of no Python
operations the stand-ins' dtypes and shapes were read from (one import of the computation
for both), starting from the loss's own gradient with respect to the stand-ins (Python's
`tf.gradients` on the loss's few ops, fed there through the stand-ins' placeholders), the
gradient ops renamed to read what the scaffolding names, and the stand-ins rewired to
them. As under
`training._wait_for_readers`, each variable's update waits, by control edges, for the
gradient ops reading its value. One C++ import gives the graph its default attributes and
shapes, as the other assembled graphs get them (builder/assembled.py), and the writer
exports it, and computes its fresh variables' initial values (global step, slots), from
those protos. The scaffolding holds one trainable variable per shape and dtype, its nodes
copied for the others of its kind as protos (builder/widening.py): the Python path's ops
are made once per kind, not once per variable.

Not assembled (the variant is built in Python, as before): precision, device, XLA or TPU
settings (float16 scales its loss), a source with a host part (tables), a computation that
calls functions (a `While` loop), a variable read other than by one
`ReadVariableOp` (a gather of the handle differentiates as `IndexedSlices`), a gathered
read under momentum (TF1's momentum updates only the rows an `IndexedSlices` gradient
holds; SGD and Adam update sparse and dense gradients alike), an op the C++ registry has
no gradient for, and anything the splice cannot place by name (a tensor the Python path
names otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2, variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import meta_graph

from smpack.builder.assembled import (
    NotAssembled,
    add_input_placeholders,
    graph_def_and_shapes,
    import_into,
)
from smpack.builder.c_graph import CGraph, ImportRefused, NoCxxGradient
from smpack.builder.graphs import AssembledGraph, VariantGraph, build_variant_graph
from smpack.builder.widening import NotWidened, Widening
from smpack.builder.writer import variable_nodes
from smpack.manifest import LoadedManifest, Variant
from smpack.sources.graph_def import node_name, tensor_name
from smpack.sources.losses import PASS_THROUGH
from smpack.sources.model_source import ModelSource
from smpack.sources.savedmodel import ImportedModel
from smpack.sources.training_mode import STATE_UPDATES

_STAND_IN = "smpack_stand_in"
_FED = "smpack_fed"
_GATHERS = ("Gather", "GatherV2")
# The C++ gradients' scope, inside the Python path's (`tf.gradients` names its ops
# `gradients/<op>_grad/...`, and those of the loss's ops are made that way here).
_GRADIENTS = "gradients/computation"


def assembled_train_graph(
    loaded: LoadedManifest, source: ModelSource, name: str, variant: Variant
) -> VariantGraph | None:
    """Train variant `name` of an imported source, assembled; None to build it in Python."""
    training = source.training_import
    if not variant.is_training or training is None or source.replaying is None:
        return None
    if training.host is not None or variant.device_settings:
        return None
    computation = training.graph_def
    if computation.library.function:
        return None
    try:
        try:
            return _assembled(loaded, source, source.replaying, training, name, variant, True)
        except NotWidened:
            return _assembled(loaded, source, source.replaying, training, name, variant, False)
    except NotAssembled:
        return None


def _assembled(
    loaded: LoadedManifest,
    source: ModelSource,
    replaying: Callable[[ImportedModel], Callable[..., Any]],
    training: ImportedModel,
    name: str,
    variant: Variant,
    widen: bool,
) -> VariantGraph:
    # Differentiating frees the stand-in's C graph; `closing` frees it if anything fails first.
    with contextlib.closing(_StandIn(training, variant, widen)) as stand_in:
        widening = stand_in.widening
        assert variant.optimizer is not None  # a train variant's, by the manifest schema
        gradients = _Gradients(stand_in, variant.optimizer.name)
        scaffolded = dataclasses.replace(
            training,
            graph_def=stand_in.graph_def,
            outputs=stand_in.outputs,
            variables=[v for v in training.variables if v.name in widening.members],
            handles={h: n for h, n in training.handles.items() if n in widening.members},
        )
        scaffolding = build_variant_graph(
            loaded,
            replaying(scaffolded),
            name,
            variant,
            source.assets,
            source.train_function,
            gradients=gradients.stand_ins,
        )
        graph = scaffolding.graph
        assert graph is not None and scaffolding.init_op is not None
        with graph.as_default():
            if variable_nodes(graph) is None:
                raise NotAssembled  # saved by something else than each variable's read
            collections = {}
            for key in sorted(graph.get_all_collection_keys()):
                exported = meta_graph_pb2.MetaGraphDef()
                meta_graph.add_collection_def(exported, key, graph=graph)
                if key in exported.collection_def:
                    collections[key] = exported.collection_def[key]
        collections = widening.collections(collections)
        spliced = gradients.spliced(graph.as_graph_def())
    final = tf.Graph()
    import_into(final, spliced)
    # A copy of a node made before the optimizer's differs from its original by names
    # alone, and reads its member's copies where the original reads the representative's
    # nodes (of one shape and dtype) or what the original reads: its shapes are the
    # original's, read once. (The optimizer's copies read their own variable's gradient.)
    copied = gradients.copied_before
    graph_def, shapes = graph_def_and_shapes(final, dict.fromkeys(copied))
    for copy, original in copied.items():
        shapes[copy] = shapes[original]
    for node in graph_def.node:
        if shapes[node.name] is not None:
            node.attr["_output_shapes"].CopyFrom(shapes[node.name])
    nodes = {node.name: node for node in graph_def.node}
    copies = []
    # Each variable's handle and read, what its Saver is built over (`variable_nodes`).
    for serialized in collections[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES].bytes_list.value:
        variable_def = variable_pb2.VariableDef.FromString(serialized)
        for tensor in (variable_def.variable_name, variable_def.snapshot_name):
            copy = type(nodes[node_name(tensor)])()
            copy.CopyFrom(nodes[node_name(tensor)])
            copies.append(copy)
    variables = {}
    for variable, spec in scaffolding.variables.items():
        for widened in widening.names([variable]):
            variables[widened] = spec
    # The Python graph is left behind: the writer computes the fresh variables' initial
    # values (global step, slots) from the assembled nodes.
    return dataclasses.replace(
        scaffolding,
        graph=None,
        init_op=None,
        variables=variables,
        model_variables=widening.names(scaffolding.model_variables),
        assembled=AssembledGraph(
            graph_def=graph_def,
            variable_nodes=copies,
            collections=collections,
            init_op_name=scaffolding.init_op.name,
        ),
    )


class _StandIn:
    """The source's computation cut down to what the Python path reads of it.

    Kept: each output's chain through pass-through ops (and the softmax it may end in)
    and the state updates; every other tensor those read is a `Placeholder` named
    `smpack_stand_in_N`, of the dtype and shape the real computation gives it. An
    `IdentityN`, `smpack_fed`, reads every input and variable handle the computation is
    fed, so the Python import maps them all and says what it mapped them to.
    """

    def __init__(self, training: ImportedModel, variant: Variant, widen: bool) -> None:
        computation = training.graph_def
        nodes = {node.name: node for node in computation.node}
        if _STAND_IN in nodes or _FED in nodes or any(n.startswith(f"{_STAND_IN}_") for n in nodes):
            raise NotAssembled
        self.computation = computation
        self.handles = training.handles
        self.fed = list(training.device_inputs) + sorted(training.handles)
        kept: list[str] = []
        frontier: list[str] = []

        def stood_in(tensor: str) -> None:
            if tensor not in frontier:
                frontier.append(tensor)

        ends = []
        for output in training.outputs:
            tensor = tensor_name(output.tensor)
            if node_name(tensor) not in nodes:
                raise NotAssembled  # an input returned as it is
            while node_name(tensor) in nodes:
                node = nodes[node_name(tensor)]
                if node.op in PASS_THROUGH:
                    kept.append(node.name)
                    index = int(tensor.partition(":")[2]) if node.op == "IdentityN" else 0
                    tensor = tensor_name(node.input[index])
                    continue
                if node.op == "Softmax":
                    kept.append(node.name)
                    tensor = ""
                break
            ends.append(tensor)
        kept += [node.name for node in computation.node if node.op in STATE_UPDATES]
        self.kept = set(kept)
        fed = set(self.fed)
        pinned = {
            training.handles[tensor_name(tensor)]
            for name in self.kept
            for tensor in nodes[name].input
            if tensor_name(tensor) in training.handles
        }
        self.widening = Widening(training.variables, pinned, widen)
        # The scaffolding holds the representatives alone (builder/widening.py).
        self.fed = list(training.device_inputs) + sorted(
            h for h, n in training.handles.items() if n in self.widening.members
        )
        for output, end in zip(training.outputs, ends, strict=True):
            if end and end == tensor_name(output.tensor):
                stood_in(end)
        for name in dict.fromkeys(kept):
            for tensor in nodes[name].input:
                tensor = tensor_name(tensor)
                if tensor.startswith("^") or node_name(tensor) in self.kept or tensor in fed:
                    continue
                stood_in(tensor)
        self.frontier = {tensor: f"{_STAND_IN}_{i}" for i, tensor in enumerate(frontier)}
        # What the Python path imports and returns: a stand-in for an output it reads.
        self.outputs = [
            dataclasses.replace(t, tensor=f"{self.frontier[tensor_name(t.tensor)]}:0")
            if tensor_name(t.tensor) in self.frontier
            else t
            for t in training.outputs
        ]

        forward = graph_pb2.GraphDef()
        forward.versions.CopyFrom(computation.versions)
        add_input_placeholders(forward, training.inputs, variant.batch_size)
        forward.node.extend(training.variables_template().graph_def.node)
        # The C++ registry has no gradient for an `IdentityN` (`_without_identity_n`).
        differentiable, self.identities = _without_identity_n(computation)
        self._in_graph = {output: f"{identity}:0" for identity, output in self.identities.items()}
        # The computation reads each input's placeholder and each variable's template.
        self.mapping = {t.tensor: t.key for t in training.inputs}
        self.mapping.update(training.handles)
        real = _with_computation(forward, differentiable, "", self.mapping)
        if any(n.name == _GRADIENTS or n.name.startswith(f"{_GRADIENTS}/") for n in real.node):
            raise NotAssembled
        # One C graph of the computation gives the stand-ins their dtypes and shapes, and,
        # once the Python path has the loss's gradients, the computation's (`differentiated`).
        try:
            self._graph = CGraph(real)
        except ImportRefused as e:
            raise NotAssembled from e  # the Python path reports it as it always did
        try:
            self.placeholders: dict[str, Any] = {}  # frontier tensor -> its stand-in
            for tensor, name in self.frontier.items():
                placeholder = node_def_pb2.NodeDef(name=name, op="Placeholder")
                placeholder.attr["dtype"].type = self._dtype(tensor)
                shape = self._graph.shape(self._in_graph.get(tensor, tensor))
                placeholder.attr["shape"].shape.CopyFrom(shape.as_proto())
                self.placeholders[tensor] = placeholder
            self.fed_dtypes = [self._dtype(self.mapping[t]) for t in self.fed]
        except BaseException:
            self.close()
            raise

        self.graph_def = graph_pb2.GraphDef()
        self.graph_def.versions.CopyFrom(computation.versions)
        self.graph_def.node.extend(self.placeholders.values())
        for node in computation.node:
            if node.name in self.kept:
                copy = self.graph_def.node.add()
                copy.CopyFrom(node)
                copy.input[:] = [
                    self.frontier.get(tensor_name(i), i)
                    for i in node.input
                    if not i.startswith("^")
                ]
        uses = self.graph_def.node.add(name=_FED, op="IdentityN", input=self.fed)
        uses.attr["T"].list.type.extend(self.fed_dtypes)

    def _dtype(self, tensor: str) -> int:
        return int(self._graph.dtype(self._in_graph.get(tensor, tensor)).as_datatype_enum)

    def differentiated(self, ys: list[str], xs: list[str]) -> tuple[list[str | None], list[Any]]:
        """The gradients, with respect to the computation's tensors `xs`, of a loss whose
        gradient with respect to each frontier tensor of `ys` its stand-in holds, added
        under `_GRADIENTS` by TF's C++ registry; with the nodes made (all named as in the
        C graph: the computation's unscoped). Closes the C graph."""
        try:
            stand_ins = graph_pb2.GraphDef()
            stand_ins.versions.CopyFrom(self.computation.versions)
            stand_ins.node.extend(self.placeholders[y] for y in ys)
            self._graph.add(stand_ins)
            dys = self._graph.add_gradients(
                _GRADIENTS, [(self._in_graph.get(y, y), f"{self.frontier[y]}:0") for y in ys], xs
            )
            made = [n for n in self._graph.graph_def().node if n.name.startswith(f"{_GRADIENTS}/")]
        except (ImportRefused, NoCxxGradient) as e:
            raise NotAssembled from e
        finally:
            self.close()
        return dys, made

    def close(self) -> None:
        """Free the C graph (`differentiated` does)."""
        self._graph.close()

    def stood_in(self, scope: str) -> set[str]:
        """The nodes the Python import of the stand-in made, under `scope`."""
        return {f"{scope}/{node.name}" for node in self.graph_def.node}


class _Gradients:
    """The stand-in gradients the Python path's optimizer applies, and the splice that
    replaces them, with the stand-in computation, by the real ones."""

    def __init__(self, stand_in: _StandIn, optimizer: str) -> None:
        self._stand_in = stand_in
        self._optimizer = optimizer
        self._scope = ""
        self._fed: dict[str, str] = {}
        self._gradient_nodes: list[Any] = []
        self._real_gradients: dict[str, str] = {}  # stand-in gradient -> real tensor
        self._readers: dict[str, list[str]] = {}  # stand-in gradient -> ops to wait for
        # The scaffolding before the optimizer's ops, and its splice: the start of the
        # finished scaffolding's (`spliced`); the widened copies in it -> their originals.
        self._before = graph_pb2.GraphDef()
        self._forward = graph_pb2.GraphDef()
        self.copied_before: dict[str, str] = {}

    def stand_ins(self, loss: tf.Tensor) -> list[tuple[Any, Any]]:
        """What `opt.compute_gradients(loss)` gives, each gradient stood in for by its
        variable's read."""
        graph = loss.graph
        fed_ops = [op for op in graph.get_operations() if op.name.endswith(f"/{_FED}")]
        if len(fed_ops) != 1:
            raise NotAssembled
        self._scope = fed_ops[0].name[: -len(f"/{_FED}")]
        self._fed = {
            key: tensor.name
            for key, tensor in zip(self._stand_in.fed, fed_ops[0].inputs, strict=True)
        }
        widening = self._stand_in.widening
        # The widened variables' handles, under their own names as the representatives'.
        self._fed.update(
            {h: f"{n}:0" for h, n in self._stand_in.handles.items() if n in widening.member_of}
        )
        variables = tf.compat.v1.trainable_variables() + tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.TRAINABLE_RESOURCE_VARIABLES
        )
        # The loss is the Python path's own, and so is its gradient with respect to what
        # it reads of the computation (the stand-ins): a few ops, which TF's C++ registry
        # may not cover (a sparse cross-entropy). C++ carries it on from there.
        stood_in = [
            graph.get_tensor_by_name(f"{self._scope}/{name}:0")
            for name in self._stand_in.frontier.values()
        ]
        read_by_loss = [
            (tensor, gradient.name)
            for tensor, gradient in zip(
                self._stand_in.frontier,
                tf.compat.v1.gradients(loss, stood_in) if stood_in else [],
                strict=True,
            )
            if isinstance(gradient, tf.Tensor)
        ]
        self._before = graph.as_graph_def()
        forward, copied = self._spliced(self._before, None)
        self._forward = forward
        self.copied_before = copied
        nodes = {node.name: node for node in forward.node}
        if any(n.startswith(f"{_GRADIENTS}/") or n == _GRADIENTS for n in nodes):
            raise NotAssembled
        consumers = _consumers(forward.node)
        # (the Python variable, or None for a widened one; its handle; its read)
        trained: list[tuple[Any, str, str]] = []
        for variable in variables:
            handle = variable.handle.op.name
            read = variable._graph_element.op.name  # noqa: SLF001
            trained.append((variable, handle, read))
            trained += [
                (None, member, widening.renamed(read, handle, member))
                for member in widening.members.get(handle, [])
            ]
        reads: list[str | None] = []
        for _, handle, _ in trained:
            # Through the Identity ops an inlined function passes its inputs on with.
            in_model = [
                op
                for op in _through_identities(f"{handle}:0", consumers, nodes, consumers)
                if op.startswith(f"{self._scope}/")
            ]
            found = [op for op in in_model if nodes[op].op == "ReadVariableOp"]
            if len(found) > 1 or any(
                nodes[op].op not in ("ReadVariableOp", *STATE_UPDATES) for op in in_model
            ):
                raise NotAssembled  # summed, or differentiated otherwise, by the Python path
            if found and self._optimizer == "momentum":
                read_by = _through_identities(f"{found[0]}:0", consumers, nodes, consumers)
                if any(nodes[op].op in _GATHERS for op in read_by):
                    # tf.gradients makes a gathered read's gradient IndexedSlices, which
                    # momentum applies to the gathered rows only; C++'s is dense.
                    raise NotAssembled
            reads.append(f"{found[0]}:0" if found else None)
        reachable = _ancestors(nodes, [f"{self._scope}/{node_name(y)}" for y, _ in read_by_loss])
        xs = [r for r in reads if r is not None and node_name(r) in reachable]
        # Differentiated in the stand-in's C graph of the computation (no second import),
        # what the gradient ops read there renamed as the scaffolding names it.
        if xs and read_by_loss:
            scoped = len(f"{self._scope}/")
            made, gradient_nodes = self._stand_in.differentiated(
                [y for y, _ in read_by_loss], [x[scoped:] for x in xs]
            )
        else:
            self._stand_in.close()
            made, gradient_nodes = [], []
        in_scaffolding = self._in_scaffolding(
            {f"{self._stand_in.frontier[y]}:0": dy for y, dy in read_by_loss}
        )
        dys = [None if d is None else in_scaffolding(d) for d in made]
        gradient_of = dict(zip(xs, dys, strict=True))
        for node in gradient_nodes:
            node.input[:] = [_as_input(in_scaffolding(name)) for name in node.input]
            if "_class" in node.attr:  # colocated with forward ops: `loc:@<node>`
                colocated = node.attr["_class"].list.s
                colocated[:] = [
                    b"loc:@" + node_name(in_scaffolding(c.decode()[len("loc:@") :])).encode()
                    for c in colocated
                ]
        self._gradient_nodes = gradient_nodes
        gradient_consumers = _consumers(gradient_nodes)
        grads_and_vars = []
        differentiated_representative = False
        for (variable, _, stood_in_read), read in zip(trained, reads, strict=True):
            real = gradient_of.get(read) if read is not None else None
            if variable is not None:
                differentiated_representative = real is not None
            elif differentiated_representative != (real is not None):
                raise NotWidened  # the representative's update is not this variable's
            if read is None or real is None:
                if variable is not None:
                    grads_and_vars.append((None, variable))
                continue
            # The variable's own read (made already, like every op the optimizer reads
            # it through) stands in for its gradient in the ops made from here on.
            self._real_gradients[stood_in_read] = real
            readers = _through_identities(read, gradient_consumers, nodes, consumers)
            self._readers[stood_in_read] = sorted(set(readers) - {node_name(real)})
            if variable is not None:
                stand_in = variable._graph_element  # noqa: SLF001
                if stand_in.op.type != "ReadVariableOp" or stand_in.value_index:
                    raise NotAssembled
                grads_and_vars.append((stand_in, variable))
        return grads_and_vars

    def _in_scaffolding(self, stand_ins: dict[str, str]) -> Callable[[str], str]:
        """What a tensor or control input of the stand-in's C graph is in the scaffolding:
        `stand_ins` the loss's gradients the stand-ins hold; a full tensor name."""
        stand_in = self._stand_in
        scope = self._scope
        computation = {node.name for node in stand_in.computation.node}
        fed: dict[str, str | None] = {}  # what the computation reads -> the Python graph's
        for tensor, read in stand_in.mapping.items():
            if tensor in self._fed:
                read = tensor_name(read)
                same = fed.get(read, self._fed[tensor]) == self._fed[tensor]
                fed[read] = self._fed[tensor] if same else None  # None: read as two

        def renamed(name: str) -> str:
            node = node_name(name)
            if node.startswith(f"{_GRADIENTS}/"):
                return name
            tensor = tensor_name(name.lstrip("^"))
            target: str | None
            if node in stand_in.identities:
                if tensor != f"{node}:0":
                    raise NotAssembled
                target = f"{scope}/{stand_in.identities[node]}"
            elif tensor in stand_ins:
                target = stand_ins[tensor]
            elif tensor in fed:
                target = fed[tensor]
            elif node in computation:
                target = f"{scope}/{tensor}"
            else:
                target = None
            if target is None:
                raise NotAssembled  # read as the Python path does not name it
            return f"^{node_name(target)}" if name.startswith("^") else target

        return renamed

    def spliced(self, scaffolding: Any) -> Any:
        """The finished scaffolding's GraphDef with the real computation and gradients
        (the splice made with the stand-in gradients, extended: the one of `stand_ins`)."""
        if any(node.name.startswith(f"{_GRADIENTS}/") for node in scaffolding.node):
            raise NotAssembled  # named after the gradients were made
        before = self._before.node
        # The stand-in's nodes, which the computation replaces, may have changed since
        # (`tf.group` marks the state updates it waits for); no other may have.
        stood_in = self._stand_in.stood_in(self._scope)
        if len(scaffolding.node) < len(before) or any(
            now.name != then.name or (now.name not in stood_in and now != then)
            for now, then in zip(scaffolding.node[: len(before)], before, strict=True)
        ):
            raise NotAssembled
        after = graph_pb2.GraphDef()
        after.versions.CopyFrom(scaffolding.versions)
        after.library.CopyFrom(scaffolding.library)
        after.node.extend(scaffolding.node[len(before) :])
        added, copied = self._spliced(after, self._real_gradients)
        self._stand_in.widening.check_names(
            (node.name for node in scaffolding.node), [*self.copied_before, *copied]
        )
        graph_def = self._forward
        graph_def.library.CopyFrom(added.library)
        graph_def.node.extend(added.node)
        graph_def.node.extend(self._gradient_nodes)
        return graph_def

    def _spliced(
        self, scaffolding: Any, gradients: dict[str, str] | None
    ) -> tuple[Any, dict[str, str]]:
        """`scaffolding` widened, with the real computation in place of the stand-in's
        nodes (`gradients` None: they are all in it) or the real gradients in place of the
        stand-in ones (`gradients`: it holds what the optimizer made, and no stand-in);
        and its copies' names."""
        stand_in = self._stand_in
        scope = self._scope
        stood_in = stand_in.stood_in(scope)
        widening = stand_in.widening
        if any(widening.members.get(widening.owner(name) or "") for name in stood_in):
            raise NotWidened  # a computation's node named as a variable's would be copied
        scaffolding, copied = widening.widened(scaffolding, stood_in)
        renamed = {
            f"{scope}/{name}": f"{scope}/{tensor}" for tensor, name in stand_in.frontier.items()
        }
        spliced = graph_pb2.GraphDef()
        spliced.versions.CopyFrom(scaffolding.versions)
        spliced.library.CopyFrom(scaffolding.library)
        computation_added = False
        for node in scaffolding.node:
            if node.name in stood_in:
                if not computation_added:
                    computation = _with_computation(
                        graph_pb2.GraphDef(), stand_in.computation, scope, self._fed
                    )
                    spliced.node.extend(computation.node)
                    computation_added = True
                continue
            copy = spliced.node.add()
            copy.CopyFrom(node)
            inputs = [_renamed(i, renamed) for i in node.input]
            if gradients is not None:
                # The optimizer's ops read the real gradients, and each update waits for
                # the gradient ops reading its variable.
                waits = [f"^{r}" for i in node.input for r in self._readers.get(node_name(i), [])]
                inputs = [_renamed(i, gradients) for i in inputs] + waits
            copy.input[:] = inputs
        if computation_added != (gradients is None):
            raise NotAssembled  # the stand-in's nodes are made before the optimizer's
        return spliced, copied


def _with_computation(head: Any, computation: Any, scope: str, fed: dict[str, str]) -> Any:
    """`head` and `computation`'s nodes under `scope` (none: ""), reading `fed`'s tensors
    where the computation reads the keys."""
    prefix = f"{scope}/" if scope else ""
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(head)
    for node in computation.node:
        added = graph_def.node.add()
        added.CopyFrom(node)
        added.name = prefix + node.name
        inputs = []
        for name in node.input:
            if name.startswith("^"):
                inputs.append("^" + prefix + name[1:])
            else:
                inputs.append(fed.get(tensor_name(name)) or prefix + name)
        added.input[:] = inputs
    return graph_def


def _without_identity_n(graph_def: Any) -> tuple[Any, dict[str, str]]:
    """`graph_def` with each `IdentityN` (inlined functions' results), which TF's C++
    registry has no gradient for, made one `Identity` per output, whose gradient passes
    the same value on; and each such `Identity` -> the output it stands for."""
    identities: dict[str, str] = {}
    made: dict[str, list[str]] = {}
    result = graph_pb2.GraphDef()
    result.versions.CopyFrom(graph_def.versions)
    result.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.op != "IdentityN":
            result.node.add().CopyFrom(node)
            continue
        data = [name for name in node.input if not name.startswith("^")]
        control = [name for name in node.input if name.startswith("^")]
        made[node.name] = []
        for index, (name, dtype) in enumerate(zip(data, node.attr["T"].list.type, strict=True)):
            identity = result.node.add(
                name=f"{node.name}/smpack_identity_{index}",
                op="Identity",
                input=[name, *control],
                device=node.device,
            )
            identity.attr["T"].type = dtype
            identities[identity.name] = f"{node.name}:{index}"
            made[node.name].append(identity.name)
    if not made:
        return graph_def, identities
    for node in result.node:
        inputs = []
        for name in node.input:
            source = node_name(name)
            if source not in made:
                inputs.append(name)
            elif name.startswith("^"):
                inputs += [f"^{identity}" for identity in made[source]]
            else:
                inputs.append(made[source][int(tensor_name(name).partition(":")[2])])
        node.input[:] = inputs
    return result, identities


def _as_input(tensor: str) -> str:
    """A tensor as a NodeDef's input names it (output 0 by its node alone)."""
    return tensor[: -len(":0")] if tensor.endswith(":0") else tensor


def _renamed(name: str, renamed: dict[str, str]) -> str:
    """Input `name` reading what `renamed` maps its node to (stand-ins have one output)."""
    node = node_name(name)
    if node not in renamed:
        return name
    target = renamed[node]
    if name.startswith("^"):
        return f"^{node_name(target)}"
    if tensor_name(name) != f"{node}:0":
        raise NotAssembled
    return target[: -len(":0")] if target.endswith(":0") else target


def _consumers(nodes: Iterable[Any]) -> dict[str, list[str]]:
    """Tensor -> the `nodes` reading it as data."""
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            if not name.startswith("^"):
                consumers.setdefault(tensor_name(name), []).append(node.name)
    return consumers


def _ancestors(nodes: dict[str, Any], names: list[str]) -> set[str]:
    """The nodes `names` depend on through data edges, themselves included."""
    seen = set(names)
    pending = list(names)
    while pending:
        for tensor in nodes[pending.pop()].input:
            if tensor.startswith("^"):
                continue
            node = node_name(tensor)
            if node not in seen and node in nodes:
                seen.add(node)
                pending.append(node)
    return seen


def _through_identities(
    tensor: str,
    readers: dict[str, list[str]],
    forward: dict[str, Any],
    forward_readers: dict[str, list[str]],
) -> list[str]:
    """The `readers` of `tensor` but Identity ops, directly or through the forward's
    `Identity` ops, which pass the same handle or value on."""
    found, pending = [], [tensor]
    while pending:
        current = pending.pop()
        found += [
            name
            for name in readers.get(current, [])
            if name not in forward or forward[name].op != "Identity"
        ]
        pending += [
            f"{name}:0"
            for name in forward_readers.get(current, [])
            if forward[name].op == "Identity"
        ]
    return found
