"""The Hugging Face export: ``babyssm export`` and the remote code it ships."""
