"""The tools' structured results: what `outputSchema` advertises and `structuredContent` carries.

Flat, JSON-friendly shapes: a model reads these, and some clients show only the text block, so each
result also renders itself as text (`tools.py`) with every id, size and URI in it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from crm_mcp.backends.base import Capabilities, FileEntry, FindType, Photo, RecordType
from crm_mcp.uris import file_uri, photo_uri

__all__ = [
    "BackendInfo",
    "BindPhotoResult",
    "CaseFilesResult",
    "ContactPhotoResult",
    "FileInfo",
    "FindRecordsResult",
    "FoundRecord",
    "ListBackendsResult",
    "PhotoInfo",
    "PreviewInfo",
    "ReadFileResult",
    "SaveFileResult",
    "UploadResult",
]


class FileInfo(BaseModel):
    """One file attached to a CRM record."""

    file_id: str = Field(description="opaque id of the file on its backend")
    name: str
    mime_type: str
    size: int | None = Field(description="size in bytes, when the CRM reports it")
    created_at: str | None = Field(description="ISO 8601 timestamp, when the CRM reports it")
    resource_uri: str | None = Field(description="crm:// URI to read, save or copy the bytes; null for links")
    kind: Literal["file", "link"] = Field(description="'link' entries point elsewhere and have no bytes")
    url: str | None = Field(default=None, description="target of a link entry")

    @classmethod
    def of(cls, backend: str, entry: FileEntry) -> FileInfo:
        return cls(
            file_id=entry.file_id,
            name=entry.name,
            mime_type=entry.mime_type,
            size=entry.size,
            created_at=entry.created_at.isoformat() if entry.created_at else None,
            resource_uri=file_uri(backend, entry.file_id) if entry.kind == "file" else None,
            kind=entry.kind,
            url=entry.url,
        )


class CaseFilesResult(BaseModel):
    backend: str
    case_id: str
    files: list[FileInfo]
    next_cursor: str | None = Field(description="pass as cursor to get the next page; null on the last page")


class PhotoInfo(BaseModel):
    photo_id: str
    mime_type: str
    size: int | None
    resource_uri: str

    @classmethod
    def of(cls, backend: str, contact_id: str, photo: Photo) -> PhotoInfo:
        return cls(
            photo_id=photo.photo_id,
            mime_type=photo.mime_type,
            size=photo.size,
            resource_uri=photo_uri(backend, contact_id),
        )


class PreviewInfo(BaseModel):
    """The downscaled copy shown inline when the photo itself is over `limits.inline_bytes`."""

    mime_type: str
    size: int = Field(description="bytes of the preview image")
    width: int
    height: int


class ContactPhotoResult(BaseModel):
    backend: str
    contact_id: str
    photo: PhotoInfo | None = Field(description="null when the contact has no photo")
    shown_inline: Literal["photo", "preview", "none"] = Field(
        default="none",
        description="'photo': the photo itself is the image block; 'preview': a smaller copy is (the full photo "
        "is the resource link); 'none': no image block (the text says why)",
    )
    preview: PreviewInfo | None = Field(default=None, description="the inline preview, when shown_inline is 'preview'")


class UploadResult(FileInfo):
    backend: str
    record_type: RecordType
    record_id: str
    sha256: str = Field(description="SHA-256 (hex) of the bytes sent to the CRM, computed while they streamed")


class BindPhotoResult(BaseModel):
    backend: str
    contact_id: str
    photo: PhotoInfo
    sha256: str = Field(description="SHA-256 (hex) of the image bytes sent to the CRM, computed while they streamed")


class FoundRecord(BaseModel):
    id: str = Field(description="the id to pass to the other tools")
    title: str


class FindRecordsResult(BaseModel):
    backend: str
    record_type: FindType
    query: str
    records: list[FoundRecord]


class ReadFileResult(BaseModel):
    resource_uri: str
    name: str
    mime_type: str
    size: int
    returned_as: Literal["text", "resource"] = Field(
        description="'text': the file's text is in `text` and in the text content; 'resource': the bytes are an "
        "embedded resource"
    )
    text: str | None = Field(
        default=None,
        description="the file's text when returned_as is 'text' (also here because some clients show the model "
        "only the structured result), else null",
    )
    sha256: str = Field(description="SHA-256 (hex) of the file's bytes as read")


class SaveFileResult(BaseModel):
    resource_uri: str
    path: str
    size: int
    sha256: str
    mime_type: str


class BackendInfo(BaseModel):
    name: str
    vendor: str
    default: bool
    capabilities: Capabilities


class ListBackendsResult(BaseModel):
    default_backend: str
    backends: list[BackendInfo]
