"""docs/upgrading.md, the checklist for a torch upgrade, names every private torch name the trainer uses.

Read from the checkout (docs/ is not in the image): src/*.py's code, not its comments, through ast, so a
name that only a docstring mentions is not counted as used.
"""

import ast
import re

from e2e_env import ROOT

DOC = ROOT / "docs" / "upgrading.md"
PUBLIC_DUNDERS = {"__version__"}  # torch.__version__ is public


def dotted(node):
    """'torch._C._nn.max_pool2d_with_indices' for that attribute chain; None if it does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def torch_chains(source):
    """Every whole torch.* attribute chain in the code of `source` (torch._C._nn.x, not also torch._C._nn)."""
    tree = ast.parse(source)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    chains = {dotted(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute) and id(node) not in inner}
    return {name for name in chains if name and name.split(".")[0] == "torch"}


def private_torch_names(source):
    """The torch.* chains in `source` that hold a private part (`_x`, `__wrapped__`) or reach an aten
    operator through torch.ops.aten."""
    return {
        name
        for name in torch_chains(source)
        if name.startswith("torch.ops.aten.")
        or any(part.startswith("_") and part not in PUBLIC_DUNDERS for part in name.split("."))
    }


def in_src(scan):
    return {name: path.name for path in (ROOT / "src").glob("*.py") for name in scan(path.read_text())}


def test_the_scan_finds_private_names_in_code_and_not_in_comments():
    source = (
        'x = torch._C._nn.pool(y)  # torch._dynamo\n"""torch._disable_dynamo"""\nf = torch.ops.aten.mm.default._op\n'
    )
    assert private_torch_names(source) == {"torch._C._nn.pool", "torch.ops.aten.mm.default._op"}


def test_every_private_torch_name_in_src_is_in_docs_upgrading():
    used = in_src(private_torch_names)
    assert used, "no private torch name found in src/: the scan is broken, or docs/upgrading.md's list is stale"
    doc = DOC.read_text()
    missing = sorted(f"{name} ({where})" for name, where in used.items() if f"`{name}`" not in doc)
    assert not missing, f"add these to docs/upgrading.md with what they do and the test that guards them: {missing}"


def test_every_torch_name_docs_upgrading_lists_is_still_in_src():
    listed = set(re.findall(r"^\| `(torch\.[\w.]+)`", DOC.read_text(), re.M))  # its tables' first column
    assert listed, "docs/upgrading.md has no table of torch names"
    gone = sorted(listed - set(in_src(torch_chains)))
    assert not gone, f"docs/upgrading.md lists names src/ no longer uses: {gone}"
