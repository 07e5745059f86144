"""The docs: config tables generated from the dataclasses' help, and every relative link resolves."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from verl_variance.core.config import fill_config_tables

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md")),
         ROOT / "recipes" / "README.md"]  # fmt: skip


@dataclass
class _Inner:
    rate: float = field(default=0.5, metadata={"help": "A rate."})


@dataclass
class _Example:
    name: str = field(default="std", metadata={"help": "A name."})
    limit: int | None = field(default=None, metadata={"help": "A limit; null: none."})
    flag: bool = field(default=False, metadata={"help": "A flag."})
    inner: _Inner = field(default_factory=_Inner)


def test_a_config_table_lists_every_key_with_its_yaml_default_and_help():
    page = "before\n<!-- config-table tests.test_docs._Example group. -->\nstale\n<!-- /config-table -->\nafter\n"
    assert fill_config_tables(page) == (
        "before\n<!-- config-table tests.test_docs._Example group. -->\n"
        "| key | default | meaning |\n| --- | --- | --- |\n"
        "| `group.name` | `std` | A name. |\n| `group.limit` | `null` | A limit; null: none. |\n"
        "| `group.flag` | `false` | A flag. |\n| `group.inner.rate` | `0.5` | A rate. |\n"
        "<!-- /config-table -->\nafter\n"
    )


def test_the_docs_config_tables_are_the_dataclasses_keys():
    blocks = 0
    for page in PAGES:
        text = page.read_text()
        blocks += text.count("<!-- config-table ")
        assert fill_config_tables(text) == text, f"{page.name}: run python -m verl_variance.core.config {page}"
    assert blocks >= 5  # variance_kl, ensemble_reward, rvpo, r2vpo, train-rm


def test_every_relative_link_of_the_docs_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which is missing"
