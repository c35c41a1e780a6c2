"""What a multi-LLM application is: LLM nodes, their request sets, and which outputs feed which prompts."""
