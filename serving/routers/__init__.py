"""One router per concern: health, model, agents, score."""
