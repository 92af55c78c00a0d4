"""
The README's txmsg.testing guide is code users copy: it must run.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_testing_guide_examples_pass() -> None:
    """
    The guide's code block defines test functions; each passes against the
    memory broker.
    """
    text = README.read_text()
    start = text.index("```python\nfrom txmsg import Consumer, NoServer")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 3
    for test in tests:
        test()
