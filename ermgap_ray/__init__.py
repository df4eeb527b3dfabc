"""ermgap-ray: ERM-MinMaxGAP fairness fine-tuning of speech LLMs on Ray."""

__version__ = "0.1.0"
