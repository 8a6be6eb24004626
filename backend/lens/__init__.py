"""Where an answer came from: logit lens over layers, input attribution, direct logit
attribution, for stored runs."""
