"""Reading a user's text files within bounds: dataset YAMLs, YOLO label files, class and image lists, split files.

A file a user points at may be huge (a wrong path, `/dev/zero`), not UTF-8 (saved by an old editor), start with
a UTF-8 byte-order mark (Notepad), or be a YAML "billion laughs" whose aliases expand a few kilobytes into
gigabytes. Every such file is read here: at most a fixed number of bytes, decoded as UTF-8 with an optional BOM,
and YAML is composed into nodes and measured with its aliases expanded *before* any Python object is built, so a
bomb is refused while it is still a few kilobytes of nodes. Each refusal names the file and what to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from anchorfree.data.records import InvalidAnnotation

MAX_YAML_BYTES = 16 * 2**20  # a dataset YAML lists paths and class names: kilobytes, not megabytes
MAX_LABEL_FILE_BYTES = 64 * 2**20  # a label, class-list, image-list or split file (one image's labels are kilobytes)
# The size of a YAML document with every alias expanded: one unit per node plus the characters of its scalars.
# An alias-free document within MAX_YAML_BYTES stays within it; a bomb passes it after a few thousand nodes.
MAX_YAML_EXPANDED_SIZE = 4 * MAX_YAML_BYTES


class YAMLExpansionError(yaml.YAMLError):
    """A YAML document whose aliases expand beyond MAX_YAML_EXPANDED_SIZE, or refer to themselves."""


def read_bytes_limited(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of `path`, refusing (InvalidAnnotation naming the file) one longer than `max_bytes`.

    Reads at most max_bytes + 1 bytes, so a device or a file that grows while it is read is refused too.
    """
    with open(path, "rb") as stream:
        content = stream.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise InvalidAnnotation(
            f"{path}: {what} is larger than {max_bytes} bytes ({max_bytes // 2**20} MiB), the most that is read; "
            "check the path points at the right file, or split it",
            "file too large",
        )
    return content


def decode_utf8(path: Path, content: bytes, what: str) -> str:
    """`content` decoded as UTF-8, a leading byte-order mark dropped; InvalidAnnotation naming the file and byte."""
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content.count(b"\n", 0, error.start) + 1
        raise InvalidAnnotation(
            f"{path}: {what} is not UTF-8 text: byte {error.start} (line {line}) is "
            f"{content[error.start : error.end]!r} ({error.reason}); save the file as UTF-8",
            "file not UTF-8",
        ) from None


def read_text_limited(path: Path, max_bytes: int = MAX_LABEL_FILE_BYTES, what: str = "the file") -> str:
    """The text of a user's file: at most `max_bytes`, UTF-8 with an optional BOM (see `read_bytes_limited`)."""
    return decode_utf8(path, read_bytes_limited(path, max_bytes, what), what)


def safe_load_bounded(text: str, max_expanded_size: int = MAX_YAML_EXPANDED_SIZE) -> Any:
    """`yaml.safe_load(text)`, refusing a document whose aliases expand beyond `max_expanded_size`.

    The document is composed into its node graph (aliases are shared nodes there, so composing a bomb is cheap),
    measured as if every alias were written out, and only then constructed. Raises YAMLExpansionError (a
    yaml.YAMLError, with the line of the offending node) or yaml.YAMLError for invalid YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLExpansionError("the YAML is nested too deeply to read; flatten it") from None
        if node is None:
            return None
        _check_expanded_size(node, max_expanded_size)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, limit: int) -> None:
    """Raise YAMLExpansionError when the node graph under `root`, with shared (aliased) nodes counted once per
    use, is larger than `limit`, or when a node contains itself (a recursive alias)."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, for nodes already measured
    on_path: set[int] = set()  # nodes whose children are being measured (a second visit is a cycle)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order walk: deep documents must not exhaust Python's stack
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in on_path:
                raise YAMLExpansionError(f"line {node.start_mark.line + 1}: a YAML alias refers to a node that contains it")
            on_path.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in on_path:
                    raise YAMLExpansionError(f"line {child.start_mark.line + 1}: a YAML alias refers to a node that contains it")
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        on_path.discard(id(node))
        size = 1 + (len(node.value) if isinstance(node, yaml.ScalarNode) else sum(sizes[id(child)] for child in children))
        if size > limit:
            raise YAMLExpansionError(
                f"line {node.start_mark.line + 1}: the YAML's aliases (*name) expand to more than {limit} nodes and characters; "
                "write the values out instead of repeating them through aliases"
            )
        sizes[id(node)] = size


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
