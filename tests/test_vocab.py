import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringworld.documents import ACTIONS
from ringworld.tokens.vocab import MODALITY_TEXT, MODALITY_VISION, SPECIAL_TOKENS, Vocab

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)
VOCAB = Vocab(text_size=300, num_codes=50)  # text 0..299, specials 300..311, codes 312..361, actions 362..366


def test_ranges_are_contiguous_and_disjoint():
    assert VOCAB.text_ids == range(0, 300)
    assert VOCAB.special_ids == range(300, 312)
    assert VOCAB.code_ids == range(312, 362)
    assert VOCAB.action_ids == range(362, 367)
    assert VOCAB.size == 367


def test_special_ids_in_order():
    assert [VOCAB.special(name) for name in SPECIAL_TOKENS] == list(range(300, 312))
    assert VOCAB.special("<|bos|>") == 300
    assert VOCAB.special("<|eol|>") == 306
    assert VOCAB.special("<|/actions|>") == 311
    with pytest.raises(ValueError, match="unknown special token '<|nope|>'"):
        VOCAB.special("<|nope|>")


def test_codes_scalar_and_vectorised():
    assert VOCAB.code_id(0) == 312
    assert VOCAB.code_of(361) == 49
    codes = np.array([[0, 7], [49, 3]])
    ids = VOCAB.code_id(codes)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[312, 319], [361, 315]])
    np.testing.assert_array_equal(VOCAB.code_of(ids), codes)
    with pytest.raises(ValueError, match=r"visual codes must lie in 0\.\.49, got values in 0\.\.50"):
        VOCAB.code_id(np.array([0, 50]))
    with pytest.raises(ValueError, match=r"id 306 \(<\|eol\|>\) is not a visual code"):
        VOCAB.code_of(np.array([312, 306]))


def test_actions_in_documents_order():
    assert [VOCAB.action_id(a) for a in ACTIONS] == [362, 363, 364, 365, 366]
    assert [VOCAB.action_of(i) for i in VOCAB.action_ids] == list(ACTIONS)
    with pytest.raises(ValueError, match="unknown action 'jump'"):
        VOCAB.action_id("jump")
    with pytest.raises(ValueError, match=r"id 12 \(text\) is not an action"):
        VOCAB.action_of(12)


def test_kind_predicates():
    assert VOCAB.is_text(299) is True and VOCAB.is_text(300) is False
    assert VOCAB.is_code(312) is True and VOCAB.is_code(362) is False
    assert VOCAB.is_action(366) is True and VOCAB.is_action(367) is False
    np.testing.assert_array_equal(VOCAB.is_code(np.array([311, 312, 361, 362])), [False, True, True, False])


def test_describe():
    assert VOCAB.describe(12) == "id 12 (text)"
    assert VOCAB.describe(306) == "id 306 (<|eol|>)"
    assert VOCAB.describe(312 + 15) == "id 327 (visual code 15)"
    assert VOCAB.describe(363) == "id 363 (action down)"
    assert VOCAB.describe(367) == "id 367 (outside the vocabulary of size 367)"
    assert VOCAB.describe(-1) == "id -1 (outside the vocabulary of size 367)"


def test_modality():
    ids = np.array([0, 299, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 361, 362, 366])
    want = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]
    got = VOCAB.modality(ids)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert (MODALITY_TEXT, MODALITY_VISION) == (0, 1)
    with pytest.raises(ValueError, match=r"id 367 \(outside the vocabulary"):
        VOCAB.modality(np.array([1, 367]))


@SETTINGS
@given(st.integers(0, VOCAB.size - 1))
def test_every_id_has_exactly_one_kind(i):
    kinds = [VOCAB.is_text(i), VOCAB.is_special(i), VOCAB.is_code(i), VOCAB.is_action(i)]
    assert sum(kinds) == 1
    assert VOCAB.describe(i).startswith(f"id {i} (")


def test_json_round_trip_and_mismatch():
    data = VOCAB.to_json()
    assert data["text_size"] == 300 and data["num_codes"] == 50
    assert Vocab.from_json(data) == VOCAB
    with pytest.raises(ValueError, match="retokenize the data"):
        Vocab.from_json({**data, "actions": ["up", "down"]})


@pytest.mark.parametrize("bad", [{"text_size": 0, "num_codes": 5}, {"text_size": 10, "num_codes": 2.5}])
def test_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        Vocab(**bad)


def test_cells_come_last_as_vision_ids_and_round_trip_through_json():
    vocab = Vocab(text_size=300, num_codes=50, num_cells=36)
    assert vocab.cell_ids == range(367, 403) and vocab.size == 403
    assert vocab.action_ids == VOCAB.action_ids  # the ranges before them do not move
    assert vocab.is_cell(367) and not vocab.is_cell(366) and not VOCAB.is_cell(367)
    assert vocab.describe(370) == "id 370 (cell 3)"
    assert vocab.modality(np.array([367, 402, 366])).tolist() == [MODALITY_VISION, MODALITY_VISION, MODALITY_TEXT]
    assert Vocab.from_json(vocab.to_json()) == vocab
    older = {k: v for k, v in VOCAB.to_json().items() if k != "num_cells"}  # saved before cells existed
    assert Vocab.from_json(older) == VOCAB
    with pytest.raises(ValueError, match="num_cells must be an int >= 0"):
        Vocab(text_size=300, num_codes=50, num_cells=-1)
