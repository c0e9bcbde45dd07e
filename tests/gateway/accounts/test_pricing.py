"""Prices in the policy (``pricing``, ``limits.on_store_error``), their errors with key and
line, and the money: an answer's cost, its cloud equivalent, a request's reservation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.accounts.pricing import (
    ceiling_prices,
    cloud_equivalent_nusd,
    cost_nusd,
    reservation_nusd,
)
from gateway.policy.errors import PolicyError
from gateway.policy.parse import load_policy, parse_policy
from gateway.policy.pricing import LimitsSpec, Price, PricingSpec, unserved_models
from tests.helpers import REPO_ROOT, run_cli

BASE = """\
version: 1
tiers:
  edge:
    nodes: [{url: "http://e:1", model: small}]
  cloud:
    nodes: [{url: "http://c:1", model: big}, {url: "http://c:2", model: bigger}]
"""


def parse(extra: str):  # type: ignore[no-untyped-def]
    return parse_policy(BASE + textwrap.dedent(extra), source="policy.yaml")


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 0}


def test_absent_sections_price_everything_at_zero_and_fail_open() -> None:
    policy = parse("")
    assert policy.pricing == PricingSpec()
    assert policy.pricing.price("cloud", "big") == Price()
    assert policy.limits == LimitsSpec(on_store_error="open")


def test_prices_per_tier_and_per_model() -> None:
    policy = parse(
        """\
        pricing:
          cloud: {prompt_usd_per_1m: 0.2, completion_usd_per_1m: 0.6}
          models:
            bigger: {prompt_usd_per_1m: 3}
            qwen2.5-7b: {prompt_usd_per_1m: 1, completion_usd_per_1m: 2}
        limits: {max_body_bytes: 4096, on_store_error: closed}
        """
    )
    pricing = policy.pricing
    assert pricing.edge == Price()
    assert pricing.price("cloud", "big") == Price(prompt_usd_per_1m=0.2, completion_usd_per_1m=0.6)
    assert pricing.price("cloud", "bigger") == Price(prompt_usd_per_1m=3.0)
    assert policy.limits.on_store_error == "closed" and policy.max_body_bytes == 4096
    # Accepted (an override may serve it), and named for the operator's log.
    assert unserved_models(pricing, policy.served_models()) == ["qwen2.5-7b"]


@pytest.mark.parametrize(
    ("extra", "key", "line", "fragment"),
    [
        ("pricing: {edge: {prompt_usd_per_1m: -1}}\n", "pricing.edge.prompt_usd_per_1m", 7,
         "between 0"),
        ("pricing:\n  cloud: {per_token: 1}\n", "pricing.cloud.per_token", 8, "unknown key"),
        ("pricing: {gpu: {}}\n", "pricing.gpu", 7, "unknown key"),
        ("pricing:\n  models:\n    big: {completion_usd_per_1m: x}\n",
         "pricing.models.big.completion_usd_per_1m", 9, "must be a number"),
        ("pricing:\n  models:\n    big: 3\n", "pricing.models.big", 9, "must be a mapping"),
        ("pricing:\n  models:\n    '': {}\n", "pricing.models", 8, "non-empty string"),
        ("pricing: {edge: {prompt_usd_per_1m: 2000000}}\n", "pricing.edge.prompt_usd_per_1m", 7,
         "between 0"),
        ("limits: {on_store_error: maybe}\n", "limits.on_store_error", 7, "open, closed"),
        ("limits: {on_error: open}\n", "limits.on_error", 7, "unknown key"),
    ],
)  # fmt: skip
def test_errors_name_key_and_line(extra: str, key: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(extra)
    assert info.value.key == key
    assert info.value.line == line
    assert fragment in str(info.value)


def test_the_shipped_policy_carries_example_prices() -> None:
    policy = load_policy(REPO_ROOT / "policies" / "default.yaml")
    assert policy.pricing.cloud.completion_usd_per_1m > 0
    assert policy.limits.on_store_error == "open"


def test_cost_is_each_tokens_price_rounded_once() -> None:
    pricing = PricingSpec(
        edge=Price(prompt_usd_per_1m=0.01, completion_usd_per_1m=0.02),
        cloud=Price(prompt_usd_per_1m=0.2, completion_usd_per_1m=0.6),
        models={"bigger": Price(prompt_usd_per_1m=3, completion_usd_per_1m=15)},
    )
    # 1 USD per 1M tokens is 1000 nano-USD per token.
    assert cost_nusd(pricing, "edge", "small", usage(1000, 500)) == 1000 * 10 + 500 * 20
    assert cost_nusd(pricing, "cloud", "big", usage(3, 7)) == 3 * 200 + 7 * 600
    assert cost_nusd(pricing, "cloud", "bigger", usage(3, 7)) == 3 * 3000 + 7 * 15000
    assert cost_nusd(pricing, "edge", "small", usage(1, 0)) == 10
    assert (
        cost_nusd(PricingSpec(edge=Price(prompt_usd_per_1m=0.0004)), "edge", None, usage(1, 0)) == 0
    )
    # The cloud equivalent ignores where the tokens ran and any model's own price.
    assert cloud_equivalent_nusd(pricing, usage(3, 7)) == 3 * 200 + 7 * 600


def test_a_reservation_prices_the_priciest_tier_the_key_may_use() -> None:
    pricing = PricingSpec(
        edge=Price(prompt_usd_per_1m=1, completion_usd_per_1m=1),
        cloud=Price(prompt_usd_per_1m=2, completion_usd_per_1m=4),
        models={
            "bigger": Price(prompt_usd_per_1m=1, completion_usd_per_1m=10),
            "elsewhere": Price(prompt_usd_per_1m=100, completion_usd_per_1m=100),
        },
    )
    served = {"small": "edge", "big": "cloud", "bigger": "cloud"}
    ceilings = ceiling_prices(pricing, served)  # type: ignore[arg-type]
    # Each price its own maximum: the cloud's prompt, the bigger model's completion.
    assert ceilings["cloud"] == Price(prompt_usd_per_1m=2, completion_usd_per_1m=10)
    both = reservation_nusd(pricing, ("edge", "cloud"), 100, 50, served=served)  # type: ignore[arg-type]
    assert both == 100 * 2000 + 50 * 10_000
    edge_only = reservation_nusd(pricing, ("edge",), 100, 50, served=served)  # type: ignore[arg-type]
    assert edge_only == 100 * 1000 + 50 * 1000
    # Without knowing where models run, every priced model counts everywhere.
    assert reservation_nusd(pricing, ("edge",), 1, 1) == 200_000
    assert reservation_nusd(pricing, (), 1, 1) == 0


def test_a_model_name_with_a_dot_is_found_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "pricing:\n  models:\n    qwen2.5: {prompt_usd_per_1m: -2}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.line == 9
    assert info.value.key == "pricing.models.qwen2.5.prompt_usd_per_1m"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "pricing:\n  cloud: {prompt_usd_per_1m: -0.2}\n",
            ":8: pricing.cloud.prompt_usd_per_1m: must be between 0 and 1e+06, got -0.2",
        ),
        ("limits:\n  on_store_error: sometimes\n", ":8: limits.on_store_error: "),
    ],
)
def test_check_policy_names_the_key_and_line(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE + extra)
    result = run_cli("check-policy", str(path))
    assert result.returncode == 1, result.stdout
    assert f"{path}{expected}" in result.stderr
    assert "Traceback" not in result.stderr
