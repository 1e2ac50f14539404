"""What the web demo talks to and the limits it enforces before anything reaches the service."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

MiB = 1024 * 1024


class WebSettings(BaseModel):
    """Settings of one web app instance (the CLI flags of ``lenscope serve web``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    search_target: str = Field("127.0.0.1:50051", min_length=1, description="host:port of the gRPC search service")
    catalog_root: Path = Field(description="directory the catalog's image paths are relative to")
    deadline_s: float = Field(5.0, gt=0, le=300, description="deadline of each search RPC")
    # The service refuses images over its max_image_bytes (10 MiB by default): refuse them here first,
    # with a message, instead of uploading them only to be told so.
    max_upload_bytes: int = Field(10 * MiB, ge=1024, description="largest photo accepted from the browser")
    top_k: int = Field(24, ge=1, le=100, description="default number of results")
    max_top_k: int = Field(100, ge=1, le=1000, description="largest number of results a page may ask for")
    image_max_age_s: int = Field(3600, ge=0, description="Cache-Control max-age of catalog images")

    @field_validator("catalog_root")
    @classmethod
    def _directory(cls, v: Path) -> Path:
        """A catalog file stands for its directory (image paths in it are relative to it)."""
        v = Path(v)
        if v.is_file():
            v = v.parent
        if not v.is_dir():
            raise ValueError(f"{v} is neither a catalog file nor a directory")
        return v.resolve()
