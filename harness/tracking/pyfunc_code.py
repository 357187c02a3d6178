"""The code MLflow runs to load a logged harness model (MLflow's models-from-code): it names the pyfunc model.

``mlflow.pyfunc.save_model(python_model=<this file>)`` copies it into the model; loading runs it, and MLflow then
calls ``HarnessLanguageModel.load_context``, which reads the weights (safetensors) and two JSON files. Nothing is
unpickled. The model needs the harness installed where it is loaded (``--env-manager local`` when serving).
"""

from mlflow.models import set_model

from harness.tracking.logged_model import HarnessLanguageModel

set_model(HarnessLanguageModel())
