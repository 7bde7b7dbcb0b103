"""The manifest's `card:` block: what people write about a model, as opposed to what smpack reads.

Field names follow the Model Card Toolkit schema (model_details, model_parameters,
quantitative_analysis, considerations; github.com/tensorflow/model-card-toolkit,
schema v0.0.2) so the content maps onto what model card readers know. Four fields are smpack
extensions, each marked below: `Dataset.split`, `ModelParameters.task`,
`PerformanceMetric.dataset` and `Considerations.out_of_scope_uses`.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class _Strict(BaseModel):
    # NaN and infinity have no JSON or YAML-safe spelling in the card's front matter.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _StringShorthand(_Strict):
    """A model that a manifest may also write as a bare string, meaning its one required
    field: `users: [data scientists]` instead of a list of mappings."""

    _shorthand_for: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _string_means_field(cls, value: Any) -> Any:
        return {cls._shorthand_for: value} if isinstance(value, str) else value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The published schema must accept the shorthand too, or editors flag valid manifests.
        return {"anyOf": [{"type": "string"}, handler(core_schema)]}


class _Described(_StringShorthand):
    _shorthand_for = "description"
    description: str


class Owner(_Strict):
    name: str
    contact: str | None = None


class Version(_Strict):
    name: str | None = None
    date: datetime.date | None = None
    diff: str | None = None


class License(_Strict):
    """An SPDX identifier (or "proprietary"), or the text of a custom license; not both."""

    identifier: str | None = None
    custom_text: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> License:
        if (self.identifier is None) == (self.custom_text is None):
            msg = "a license has either an SPDX identifier or custom_text, not both or neither"
            raise ValueError(msg)
        return self


class Reference(_StringShorthand):
    _shorthand_for = "reference"
    reference: str


class Citation(_Strict):
    style: str | None = None
    citation: str


class ModelDetails(_Strict):
    name: str | None = None
    overview: str | None = None
    documentation: str | None = None
    owners: list[Owner] = Field(default_factory=list)
    version: Version | None = None
    licenses: list[License] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)
    citations: list[Citation] = Field(default_factory=list)


class Dataset(_Strict):
    name: str
    link: str | None = None
    description: str | None = None
    # Extension: MCT leaves "used for training or evaluation" to the free-text description.
    split: Literal["training", "evaluation"] | None = None


class ModelParameters(_Strict):
    model_architecture: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    data: list[Dataset] = Field(default_factory=list)
    # Extension: a Hugging Face task id ("tabular-regression"), the card's pipeline_tag and
    # the task of its model-index results.
    task: str | None = None


class PerformanceMetric(_Strict):
    type: str
    # int before float so a count stays 12, not 12.0; strings allow "0.91 ± 0.02".
    value: int | float | str
    slice: str | None = None
    threshold: int | float | str | None = None
    # Extension: the name of the model_parameters.data entry the metric was measured on;
    # without it, the only evaluation dataset if there is exactly one.
    dataset: str | None = None


class QuantitativeAnalysis(_Strict):
    performance_metrics: list[PerformanceMetric] = Field(default_factory=list)


class User(_Described):
    pass


class UseCase(_Described):
    pass


class OutOfScopeUse(_Described):
    pass


class Limitation(_Described):
    pass


class Tradeoff(_Described):
    pass


class Risk(_Strict):
    name: str
    mitigation_strategy: str | None = None


class Considerations(_Strict):
    users: list[User] = Field(default_factory=list)
    use_cases: list[UseCase] = Field(default_factory=list)
    # Extension: MCT has no field for uses the model is not meant for; Mitchell et al.'s
    # "Intended Use" section and the Hugging Face card template both ask for them.
    out_of_scope_uses: list[OutOfScopeUse] = Field(default_factory=list)
    limitations: list[Limitation] = Field(default_factory=list)
    tradeoffs: list[Tradeoff] = Field(default_factory=list)
    ethical_considerations: list[Risk] = Field(default_factory=list)


class CardSpec(_Strict):
    """The manifest's `card:` block; every field is optional."""

    model_details: ModelDetails = Field(default_factory=ModelDetails)
    model_parameters: ModelParameters = Field(default_factory=ModelParameters)
    quantitative_analysis: QuantitativeAnalysis = Field(default_factory=QuantitativeAnalysis)
    considerations: Considerations = Field(default_factory=Considerations)

    @field_validator("model_parameters")
    @classmethod
    def _unique_dataset_names(cls, value: ModelParameters) -> ModelParameters:
        names = [dataset.name for dataset in value.data]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            msg = f"dataset names {repeated} repeat; metrics refer to datasets by name"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _metrics_name_known_datasets(self) -> CardSpec:
        known = [dataset.name for dataset in self.model_parameters.data]
        for metric in self.quantitative_analysis.performance_metrics:
            if metric.dataset is not None and metric.dataset not in known:
                msg = (
                    f"metric {metric.type!r} names dataset {metric.dataset!r}, which is not in "
                    f"model_parameters.data ({', '.join(map(repr, known)) or 'empty'})"
                )
                raise ValueError(msg)
        return self

    def metric_dataset(self, metric: PerformanceMetric) -> Dataset | None:
        """The dataset `metric` was measured on, if the card says or implies it."""
        if metric.dataset is not None:
            return next(d for d in self.model_parameters.data if d.name == metric.dataset)
        evaluation = [d for d in self.model_parameters.data if d.split == "evaluation"]
        return evaluation[0] if len(evaluation) == 1 else None
