"""MLflow "models from code" entry point of the readl pyfunc model (logged with the model; executed on load)."""

import mlflow.models

from readl.registry.pyfunc import ReadlModel

mlflow.models.set_model(ReadlModel())
