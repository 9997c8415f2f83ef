import pytest

from ragcun.registry import (DuplicateComponentError, Registry, RegistryError, UnknownComponentError,
                             normalize_kind, normalize_name)
from ragcun.plugins import get_registry


def make_registry():
    reg = Registry()
    reg.register("loss", "isotropy", "x.y:Isotropy", provider="ragcun", aliases=("sigreg",))
    reg.register("loss", "contrastive", "x.y:Contrastive", provider="ragcun", aliases=("infonce",))
    reg.register("distance", "euclidean", "x.y:Euclid", provider="ragcun", aliases=("l2",))
    return reg


def test_lookup_normalizes_case_underscores_and_aliases():
    reg = make_registry()
    assert reg.get("loss", "Isotropy").name == "isotropy"
    assert reg.get("losses", "SIGREG").name == "isotropy"
    assert reg.get("distance", "L2").name == "euclidean"


def test_unknown_name_suggests_and_points_at_listing():
    reg = make_registry()
    with pytest.raises(UnknownComponentError) as info:
        reg.get("loss", "isotrpy")
    message = str(info.value)
    assert "did you mean 'isotropy'" in message
    assert "ragcun list losses" in message


def test_unknown_name_without_close_match_still_says_where_to_look():
    with pytest.raises(UnknownComponentError, match="ragcun list distances"):
        make_registry().get("distance", "zzzz")


def test_duplicate_names_both_providers():
    reg = make_registry()
    with pytest.raises(DuplicateComponentError) as info:
        reg.register("loss", "Isotropy", "other.mod:Iso", provider="ragcun-other")
    assert "ragcun-other" in str(info.value) and "by ragcun" in str(info.value)


def test_duplicate_alias_is_an_error_too():
    reg = make_registry()
    with pytest.raises(DuplicateComponentError, match="sigreg"):
        reg.register("loss", "my-sigreg", "m:C", provider="p", aliases=("sigreg",))


def test_same_name_in_different_kinds_is_fine():
    reg = make_registry()
    reg.register("head", "isotropy", "m:C", provider="p")
    assert reg.get("head", "isotropy").provider == "p"


@pytest.mark.parametrize("bad", ["", "has space!", "-leading"])
def test_bad_names_rejected(bad):
    with pytest.raises(RegistryError):
        Registry().register("loss", bad, "m:C", provider="p")


def test_bad_target_rejected():
    with pytest.raises(RegistryError, match="module:Class"):
        Registry().register("loss", "x", "not-a-path", provider="p")


def test_unknown_kind():
    with pytest.raises(RegistryError, match="choose one of"):
        normalize_kind("optimizer")


def test_listing_by_pattern():
    reg = make_registry()
    assert [e.name for e in reg.entries("loss")] == ["contrastive", "isotropy"]
    assert [e.name for e in reg.entries(None, "iso*")] == ["isotropy"]
    assert [e.name for e in reg.entries(None, "nce")] == ["contrastive"]  # substring over aliases
    assert [e.name for e in reg.entries(pattern="l2")] == ["euclidean"]


def test_lazy_target_reports_import_failure():
    reg = Registry()
    reg.register("head", "ghost", "ragcun_no_such_module:Head", provider="p")
    with pytest.raises(RegistryError, match="cannot be imported"):
        reg.get("head", "ghost").load()


def test_normalize_name_idempotent():
    for raw in ["Sq_Euclidean", "  gaussian ", "A B_c"]:
        once = normalize_name(raw)
        assert normalize_name(once) == once


def test_builtins_are_registered_by_the_default_plugins():
    reg = get_registry()
    for kind, name in [("encoder", "hf"), ("encoder", "all-minilm-l6-v2"), ("head", "identity"),
                       ("head", "linear"), ("head", "gaussian"), ("distance", "euclidean"),
                       ("distance", "sqeuclidean"), ("distance", "cosine"), ("distance", "dot")]:
        entry = reg.get(kind, name)
        assert entry.provider == "ragcun"
        assert entry.load() is not None  # every string target imports


def test_registered_provides_and_needs_agree_with_the_built_components():
    """The metadata `ragcun list` shows is what the component, built with its default settings, declares."""
    from ragcun.components import build
    from ragcun.plugins import get_registry

    registry = get_registry()
    checked = 0
    for entry in registry.entries("head"):
        if entry.provider != "ragcun":
            continue
        head = build("head", entry.name, in_dim=8)
        assert set(entry.provides) == set(head.provides), entry.name
        checked += 1
    for kind in ("distance", "loss"):
        for entry in registry.entries(kind):
            if entry.provider != "ragcun":
                continue
            if kind == "loss" and entry.extra.get("wraps"):  # a wrapper (matryoshka:LOSS) needs its inner loss
                from ragcun.losses.composite import build_loss

                component = build_loss(f"{entry.name}:contrastive", dim=8).losses[entry.name]
            else:
                component = build(kind, entry.name, dim=8) if kind == "loss" else build(kind, entry.name)
            assert set(entry.needs) == set(getattr(component, "needs", {"mean"})), entry.name
            checked += 1
    assert checked >= 17
