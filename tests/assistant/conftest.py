"""One trained NLU engine per test session: training takes a second or two, parsing is what
the tests are about."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.nlu import data as nlu_data
from assistant.nlu.engine import NluEngine, load_or_train, set_engine
from tests.channels.fixtures import twilio_api  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def training() -> nlu_data.TrainingData:
    return nlu_data.load()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def nlu(models_dir: Path, training: nlu_data.TrainingData) -> Iterator[NluEngine]:
    engine = load_or_train(models_dir, training)
    set_engine(engine)
    yield engine
    set_engine(None)
