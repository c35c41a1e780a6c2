"""EngineProfile files: read errors name the file; written private to their owner."""

import pytest

from samullm_lc.costmodel.profile import EngineProfile
from samullm_lc.errors import ProfileError


@pytest.mark.parametrize(("content", "expected"), [
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"[]", "is not a samullm_lc engine profile"),
])
def test_a_file_that_is_not_a_profile_is_a_profile_error_naming_it(tmp_path, content, expected):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=expected) as caught:
        EngineProfile.load(path)
    assert "p.json" in str(caught.value)


def test_a_missing_profile_says_how_to_make_one(tmp_path):
    with pytest.raises(ProfileError, match="samullm profile"):
        EngineProfile.load(tmp_path / "nope.json")
    with pytest.raises(ProfileError, match="cannot read engine profile"):
        EngineProfile.load(tmp_path)
