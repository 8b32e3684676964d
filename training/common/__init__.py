"""What every training task shares: repository paths (:mod:`.paths`), logging set-up (:mod:`.logs`),
export of weights and metadata into a model folder (:mod:`.export`) and markdown tables for model
cards (:mod:`.markdown`). Nothing here imports a task package."""
