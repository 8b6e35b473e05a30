"""The documentation that is generated from the code: every endpoint config key
carries a description (the site's config reference is made of them), and the
reference names every key the config accepts."""

from __future__ import annotations

from pydantic import BaseModel, Field

from faas.endpoint import config_reference
from faas.endpoint.config import EndpointConfig


def test_every_config_key_has_a_description():
    missing = [k.path for k in config_reference.keys() if not (k.description or "").strip()]
    assert not missing, f"config keys without Field(description=...): {', '.join(missing)}"


def test_a_key_without_a_description_is_found():
    class Block(BaseModel):
        told: int = Field(1, description="a key with its meaning")
        untold: int = 2

    class Root(BaseModel):
        block: Block = Field(default_factory=Block, description="a block")

    assert [k.path for k in config_reference.keys(Root) if not k.description] == ["block.untold"]


def test_the_reference_names_every_key():
    text = config_reference.markdown()
    for key in config_reference.keys():
        assert f"`{key.path}`" in text
    assert "`engine.provider.launcher.type`" in text and "`warm_pool.function_cache_bytes`" in text
    assert len(EndpointConfig.model_fields) == sum(1 for k in config_reference.keys() if "." not in k.path)
