"""The adaptive read size and the public pool size (issue 17: memory per slow stream)."""

import pytest

import llmstream
from llmstream._transport import MIN_READ_SIZE, READ_SIZE, next_read_size
from llmstream.testing import FakeLLMServer


def test_a_slow_stream_reads_small_a_fast_one_grows_to_the_cap() -> None:
    # One token per read: the read never grows past the smallest size.
    size = MIN_READ_SIZE
    for _ in range(100):
        size = next_read_size(size, 120)
    assert size == MIN_READ_SIZE == 448  # with its bytes header, within pymalloc's 512-byte blocks
    # Full reads: 448 B, 1.75 KiB, 7 KiB, 28 KiB, then the cap.
    sizes = [MIN_READ_SIZE]
    for _ in range(5):
        sizes.append(next_read_size(sizes[-1], sizes[-1]))
    assert sizes == [448, 1792, 7168, 28672, 65536, 65536]
    assert READ_SIZE == 65536


def test_small_reads_shrink_back_and_middling_ones_keep_the_size() -> None:
    assert next_read_size(65536, 100) == 32768
    assert next_read_size(4096, 100) == 2048
    assert (next_read_size(1024, 10), next_read_size(512, 10), next_read_size(448, 10)) == (512, 448, 448)  # never under the least
    assert next_read_size(65536, 65536 // 8) == 65536  # an eighth or more: kept
    assert next_read_size(65536, 65536 // 8 - 1) == 32768


def test_a_large_answer_crosses_every_read_size() -> None:
    # 300 KiB in one write-burst: read at 448 B, then ever larger; the text is whole.
    text = "".join(f"word{i} " for i in range(40_000))
    with FakeLLMServer() as server:
        server.script(llmstream.testing.Reply(text, events_per_write=1000))
        with llmstream.Client("openai", base_url=server.base_url("openai"), api_key="k") as client:
            assert client.complete("q", model="m").text == text


@pytest.mark.parametrize("kwargs, expected", [({}, 100), ({"max_concurrent": 7}, 7), ({"pool_size": 500}, 500),
                                              ({"pool_size": 3, "max_concurrent": 9}, 3)])
def test_pool_size_defaults_to_max_concurrent_or_100(kwargs: dict, expected: int) -> None:
    client = llmstream.Client("openai", base_url="http://127.0.0.1:9/v1", api_key="k", **kwargs)
    assert client.pool_size == expected
    adapter = client._transport.session.get_adapter("http://127.0.0.1:9/")
    assert adapter._pool_maxsize == expected  # type: ignore[attr-defined]
    client.close()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_pool_size_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(ValueError, match="pool_size must be a whole number >= 1"):
        llmstream.Client("openai", base_url="http://127.0.0.1:9/v1", api_key="k", pool_size=bad)  # type: ignore[arg-type]
