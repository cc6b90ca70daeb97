"""docs/asyncapi.yaml is current, and docs/mqtt.md shows every topic with a valid example.

Regenerate the document with ``python -m edgegate.mqtt.asyncapi > docs/asyncapi.yaml``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from edgegate.mqtt.asyncapi import CHANNELS, Channel, document, example_payload, to_yaml
from edgegate.mqtt.topics import Topics

DOCS = Path(__file__).parents[2] / "docs"
GATE = "{prefix}/{site}/{gate_id}"


def test_the_committed_asyncapi_document_is_what_the_models_generate() -> None:
    committed = (DOCS / "asyncapi.yaml").read_text(encoding="utf-8")
    assert committed == to_yaml(document()), (
        "docs/asyncapi.yaml is stale: run `python -m edgegate.mqtt.asyncapi > docs/asyncapi.yaml`"
    )


def test_the_yaml_reads_back_as_the_document() -> None:
    assert yaml.safe_load(to_yaml(document())) == json.loads(json.dumps(document()))


def test_the_yaml_writer_quotes_what_yaml_would_misread() -> None:
    tricky = {"on": "no", "@context": ["yes", 1, 2.5, None, True], "a b": {}, "x": []}
    assert yaml.safe_load(to_yaml(tricky)) == tricky


def test_every_topic_has_a_channel_and_every_reference_resolves() -> None:
    topics = Topics("{prefix}", "{site}", "{gate_id}")
    names = [n for n, v in vars(Topics).items() if isinstance(v, property) and n != "gate"]
    assert {getattr(topics, n) for n in names} == {c.address for c in CHANNELS}
    doc = document()
    for ref in re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc)):
        node: object = doc
        for part in ref.split("/"):
            assert isinstance(node, dict), ref
            node = node[part]


@pytest.mark.parametrize(
    "channel", [c for c in CHANNELS if c.model is not None], ids=lambda c: c.name
)
def test_every_example_is_valid_for_its_model(channel: Channel) -> None:
    assert channel.model is not None
    channel.model.model_validate(example_payload(channel))


def mqtt_md_examples() -> dict[str, list[str]]:
    """Each ``### `topic``` section of docs/mqtt.md and the code blocks under it."""
    text = (DOCS / "mqtt.md").read_text(encoding="utf-8")
    sections = re.split(r"^### `([^`]+)`\n", text, flags=re.MULTILINE)[1:]
    examples = {}
    for heading, body in zip(sections[::2], sections[1::2], strict=True):
        address = heading.replace("P/<site>", "{prefix}/{site}").replace("G/", GATE + "/")
        examples[address] = re.findall(r"```(?:json|text)\n(.*?)```", body, flags=re.DOTALL)
    return examples


def test_docs_mqtt_md_shows_every_topic_with_examples_its_model_accepts() -> None:
    examples = mqtt_md_examples()
    assert set(examples) == {c.address for c in CHANNELS}
    for channel in CHANNELS:
        assert examples[channel.address], f"docs/mqtt.md: no example for {channel.address}"
        for example in examples[channel.address]:
            if channel.model is not None:
                channel.model.model_validate_json(example)
