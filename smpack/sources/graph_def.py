"""Names in a GraphDef: a tensor `node:index` or a control input `^node` -> its node."""


def node_name(tensor: str) -> str:
    """The node that `tensor` (`node`, `node:1` or `^node`) comes from."""
    return tensor.lstrip("^").partition(":")[0]
