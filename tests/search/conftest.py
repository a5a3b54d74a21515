"""The search tests' fixtures (tests/search/world.py): a real MLflow server, registered models, an index."""
from tests.search.world import search_env, search_index, search_server  # noqa: F401
from tests.stages.tiny_corpus import corpus, trained  # noqa: F401
