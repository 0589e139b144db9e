"""Model loading, the backbone families and tiny kits, prompting, generation and the ReAL capture pass."""
