"""Framework overhead: a trial against plain Keras `fit`, and what a search leaves in storage."""
