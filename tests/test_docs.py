"""The README, hookspecs.md and .ci/run say what the code does."""

import ast
import dataclasses
import re
from pathlib import Path

from remixcrm_plugin_ctct import config
from remixcrm_plugin_ctct.admin import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)


def test_quickstart_holds_exactly_two_commands_one_demo_one_tests():
    demo, tests = quickstart_commands()
    assert "\n" not in demo and "\n" not in tests
    assert demo.endswith("remixcrm-ctct demo") and "install" in demo
    assert tests.endswith("hatch test") and "install" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    _, tests = quickstart_commands()
    assert tests in ci.splitlines()


def test_every_config_key_is_in_the_readme_table():
    table_keys = set(re.findall(r"^\| `([\w.]+)` \|", README, re.M))
    assert {f.name for f in dataclasses.fields(config.Settings)} | {"email_marketing.provider"} <= table_keys


def test_every_command_is_documented():
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    for name in subparsers.choices:
        assert f"remixcrm-ctct {name}" in README


def test_every_module_and_room_is_in_the_how_it_works_tree():
    package = ROOT / "remixcrm_plugin_ctct"
    section = README.split("## How it works", 1)[1].split("\n## ", 1)[0]
    names = {p.name for p in package.glob("*.py") if not p.name.startswith("__")}
    names |= {f"{p.name}/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for name in names:
        assert re.search(rf"^  {re.escape(name)}\s", section, re.M), name


# --- every log line the README quotes is one the code can print ---

# sections that quote what the plugin logs (or shows in `status`); other sections quote config and commands
LOG_SECTIONS = ("## Tokens", "## Delivery", "## Consent", "## Logging", "## Troubleshooting")
NOT_LOG_TEXT = re.compile(r"^(remixcrm-ctct|status |retry |kill |pkill |systemctl |python|hatch|GET |POST )|=")
HOLE = "\x00"  # a placeholder in the code (%s, {value}) or an ellipsis in the README: any text
PERCENT = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrifgeoxX]")


def readme_log_quotes() -> list[str]:
    """Inline quotes (a quote may wrap across lines) and fenced lines of the log-quoting sections."""
    quotes = []
    for section in re.split(r"\n(?=## )", README):
        if not section.startswith(LOG_SECTIONS):
            continue
        fenced = re.findall(r"```(?:log|text)?\n(.*?)```", section, re.S)
        prose = re.sub(r"```.*?```", "", section, flags=re.S)
        spans = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
        spans += [line.strip() for block in fenced for line in block.splitlines() if line.strip()]
        quotes += [q for q in spans if " " in q and not NOT_LOG_TEXT.search(q)]
    return quotes


def code_texts() -> list[str]:
    """Every string the package can print, placeholders as HOLE, backticks dropped (the README's
    inline quotes cannot hold them), whitespace runs as one space."""
    texts = []
    for path in (ROOT / "remixcrm_plugin_ctct").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            text = PERCENT.sub(HOLE, text).replace("%%", "%").replace("`", "")
            texts.append(" ".join(text.split()))
    return texts


def quoted_in(quote: str, text: str) -> bool:
    """Whether ``quote`` (HOLE: any text) is part of a line that ``text`` (HOLE: any value) prints,
    with at least half of the quote (or 20 characters) matching the text's own words: a value
    may stand for a phrase, not for the whole quote."""
    needed = min(20, len(quote.replace(HOLE, "")) // 2)
    end = len(text)

    def closure(states: dict[int, int]) -> dict[int, int]:  # a HOLE in the text may stand for nothing
        for j in sorted(states):
            if j < end and text[j] == HOLE and states.get(j + 1, -1) < states[j]:
                states[j + 1] = states[j]
        return states

    def reach(states: dict[int, int], j: int, literal: int) -> None:
        if states.get(j, -1) < literal:
            states[j] = literal

    states = closure(dict.fromkeys(range(end + 1), 0))  # the quote may start anywhere in the text
    for char in quote:
        following: dict[int, int] = {}
        for j, literal in states.items():
            if char == HOLE:  # the README's ellipsis: skips any part of the text, or stands for a value
                for k in range(j, end + 1):
                    reach(following, k, literal)
            elif j < end and text[j] == HOLE:  # the value goes on, or ends with this character
                reach(following, j, literal)
                reach(following, j + 1, literal)
            elif j < end and text[j] == char:
                reach(following, j + 1, literal + 1)
        states = closure(following)
        if not states:
            return False
    return max(states.values()) >= needed


def test_the_log_quote_matcher_holds_placeholders_and_ellipses():
    text = "client " + HOLE + ": constant contact answered " + HOLE + ". Fix: " + HOLE
    assert quoted_in("constant contact answered 404 " + HOLE + " Fix: check it", text)
    assert quoted_in("client 42: constant", text)
    assert not quoted_in("constant contact replied 404", text)
    assert not quoted_in("Fix: check it. constant contact answered", text)


def test_every_log_line_quoted_in_the_readme_is_in_the_code():
    quotes = readme_log_quotes()
    assert len(quotes) >= 8, quotes  # the extraction still finds the Troubleshooting quotes
    texts = code_texts()
    missing = []
    for quote in quotes:
        wanted = quote.replace("…", HOLE)
        grams = {g for g in (wanted[i : i + 6] for i in range(len(wanted) - 5)) if HOLE not in g}
        candidates = [t for t in texts if not grams or any(g in t for g in grams)]
        if not any(quoted_in(wanted, t) for t in candidates):
            missing.append(quote)
    assert not missing, f"README quotes log text the code no longer prints: {missing}"
