"""The label schema: which tasks a model predicts and with which labels.

The taxonomy is data, not code: a deployment's schema file names its tasks and labels, the
training run saves it beside the weights, and serving reads it from the model bundle. The three
task names are the API's contract; their labels are the deployment's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field, model_validator

TASK_NAMES = ("topic", "sentiment", "actionability")


class TaskSpec(BaseModel):
    """One classification head."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    labels: list[str] = Field(min_length=2)
    description: str = ""
    # Labels that mean "the care team must respond" (actionability) or "negative" (sentiment).
    positive_labels: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name!r}: duplicate labels")
        unknown = set(self.positive_labels) - set(self.labels)
        if unknown:
            raise ValueError(
                f"task {self.name!r}: positive_labels not in labels: {sorted(unknown)}"
            )
        return self

    def index(self, label: str) -> int:
        return self.labels.index(label)


class LabelSchema(BaseModel):
    """The tasks of one model, in the order of its output heads."""

    version: int = 1
    tasks: list[TaskSpec]

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [t.name for t in self.tasks]
        missing = [n for n in TASK_NAMES if n not in names]
        if missing:
            raise ValueError(f"label schema lacks the tasks {missing}")
        if len(set(names)) != len(names):
            raise ValueError("label schema names a task twice")
        if not self.task("actionability").positive_labels:
            raise ValueError("actionability needs positive_labels (the labels that need a reply)")
        if not self.task("sentiment").positive_labels:
            raise ValueError("sentiment needs positive_labels naming the negative label(s)")
        return self

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def union(self, other: LabelSchema) -> LabelSchema:
        """This schema grown by ``other``'s labels and tasks: every label and task of this
        one keeps its place (ids stay valid), ``other``'s new labels are appended to their
        task and its new tasks follow. The labeling workspace offers the served model's schema
        united with the deployment's, so evaluators can label a topic before a model has it."""
        theirs = {t.name: t for t in other.tasks}
        tasks = []
        for t in self.tasks:
            o = theirs.get(t.name)
            if o is None:
                tasks.append(t)
                continue
            labels = [*t.labels, *(lab for lab in o.labels if lab not in t.labels)]
            positive = [*t.positive_labels]
            positive += [lab for lab in o.positive_labels if lab not in positive]
            tasks.append(t.model_copy(update={"labels": labels, "positive_labels": positive}))
        mine = set(self.names)
        tasks += [t for t in other.tasks if t.name not in mine]
        return LabelSchema(version=self.version, tasks=tasks)

    @classmethod
    def load(cls, path: str | Path) -> LabelSchema:
        """Read a schema from JSON or YAML."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        if p.suffix in {".yaml", ".yml"}:
            import yaml

            return cls.model_validate(yaml.safe_load(text))
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")


def default_schema_path() -> Path:
    """The shipped schema (the airline taxonomy) used when a training config names none."""
    return Path(__file__).with_name("label_schema.yaml")
