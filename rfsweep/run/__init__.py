"""The run layer: everything that reads a config. Composition and the schema's checks (`schema`, `config`,
`preflight`, `resolvers`), the memory and cost plans (`memory`, `plan`), objects from the config (`builders`), a
job's lifecycle (`job`), the Lightning Trainer wiring (`fit`), the evaluation stage (`eval_stage`), the sweep support
(`sweep`, `summary`) and W&B tracking (`tracking`). It imports the library; the library never imports it."""
