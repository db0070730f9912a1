"""Natural-language understanding for the assistant: intent, entities and language of a
driver's message, in Rasa's parse format (see ``engine.py``; data in ``assistant/intents``)."""

from assistant.nlu.engine import FALLBACK_INTENT, NluEngine, get_engine, load_or_train, set_engine

__all__ = ["FALLBACK_INTENT", "NluEngine", "get_engine", "load_or_train", "set_engine"]
