"""What the app's buttons do, without gradio: operations on datasets and runs (ops), the one GPU job queue
(jobs) and reading a run folder into what the app shows (live). The UI wires widgets to these; tests call them."""
