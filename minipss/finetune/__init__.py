"""The §5 experiment (`minipss experiment`): fine-tune FV/PV/CV/RV, then accuracy and hallucination metrics."""
