import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> str:
    """$MOEBENCH_DATA_DIR, else ../shared/data beside the checkout (where CI puts it)."""
    return os.environ.get("MOEBENCH_DATA_DIR") or str(REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> str:
    path = shared_data_dir()
    if not os.path.isdir(os.path.join(path, "glue")):
        pytest.fail(f"real GLUE data not found at {path}: set MOEBENCH_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT with the packaged MiniLM's tokenizer: fast and offline."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from moebench.moe.upcycle import default_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
