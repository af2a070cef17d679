"""Start-up objects moved out of the garbage collector's reach.

Loading a model and a tokenizer leaves hundreds of thousands of long-lived Python objects
(modules, configs, vocabularies). Python's full collections walk all of them, and a step loop
that allocates a few objects per token triggers one every so often, each a pause of the step
(docs/architecture.md has the measured share). Frozen once start-up is over, they are never
walked again.

Only for processes that serve until they exit (the engine core's process, `pagedllm serve`):
a frozen object that later becomes part of unreachable cycles is never freed, so a library
user who builds and drops several `LLM`s in one process must not have them frozen.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then exempt every surviving object from future
    collections (`gc.freeze`). Call once a process has finished loading."""
    gc.collect()
    gc.freeze()
