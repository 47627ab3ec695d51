"""MLflow "models from code" entry point for the TARPO pyfunc.

`tarpo.serving.log_tarpo_model` logs THIS FILE (by path) instead of a pickled Python object: MLflow then
stores source code, not a cloudpickle blob that would execute arbitrary code when unpickled, and prints
no warning about it. MLflow runs this file when the model is loaded; nothing else should import it.
"""

import mlflow

from tarpo.serving import TarpoPyfuncModel

mlflow.models.set_model(TarpoPyfuncModel())
