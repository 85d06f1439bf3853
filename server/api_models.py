"""The REST API's request and response bodies as pydantic models: they validate what comes in
and are the source of the OpenAPI document's schemas (`server.api.openapi_document`).

Request models are strict (a number sent as a string is refused, not converted) and forbid
unknown fields, so a typo in a field name is an error rather than silently ignored. The limits
repeat `room_records`' own, so that the document tells clients what the store will accept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from server.invitations import MAX_LIFETIME, MAX_NAME_LENGTH, MAX_SITE_LENGTH
from server.room_records import (
    MAX_DURATION_MINUTES,
    MAX_TITLE_LENGTH,
    MIN_DURATION_MINUTES,
    SLUG,
)

Mode = Literal["discussion", "conference", "training"]
State = Literal["upcoming", "live", "ended"]
InvitationRole = Literal["host", "member", "guest"]
# A room invites a few hundred sites or accounts at most; the bound keeps a body's work small.
MAX_INVITEES = 1000
MAX_INVITE_HOURS = int(MAX_LIFETIME.total_seconds() // 3600)
DEFAULT_INVITE_HOURS = 24

Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE_LENGTH)]
Duration = Annotated[int, Field(ge=MIN_DURATION_MINUTES, le=MAX_DURATION_MINUTES)]
SiteCode = Annotated[str, Field(min_length=1, max_length=MAX_SITE_LENGTH)]
Username = Annotated[str, Field(min_length=1, max_length=64)]
# Anchored: JSON Schema patterns (and pydantic's) match anywhere in the string.
Slug = Annotated[str, Field(pattern=f"^{SLUG.pattern}$", max_length=64)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RoomCreate(_Request):
    """``POST /api/v1/rooms``: schedule a room."""

    title: Title
    starts_at: AwareDatetime = Field(description="ISO 8601 with an offset: 2030-09-02T08:00+07:00")
    duration_minutes: Duration = 60
    mode: Mode = "discussion"
    lobby: bool = Field(True, description="invited people wait until a host admits them")
    sites: list[SiteCode] = Field(
        default_factory=list,
        max_length=MAX_INVITEES,
        description="codes of the invited sites (a site invites the sites under it too)",
    )
    members: list[Username] = Field(default_factory=list, max_length=MAX_INVITEES)
    hosts: list[Username] = Field(default_factory=list, max_length=MAX_INVITEES)
    slug: Slug | None = Field(None, description="the room's name in links (default: random)")


def _without_nulls(schema: dict[str, Any]) -> None:
    # The fields are optional, not nullable: the document says what `_no_nulls` enforces.
    for prop in schema.get("properties", {}).values():
        kept = [option for option in prop.pop("anyOf", []) if option.get("type") != "null"]
        if len(kept) == 1:
            prop.update(kept[0])
        elif kept:
            prop["anyOf"] = kept
        prop.pop("default", None)
    schema["minProperties"] = 1


class RoomPatch(_Request):
    """``PATCH /api/v1/rooms/{slug}``: the fields given change, the others stay. `sites`,
    `members` and `hosts` each replace that whole list."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_without_nulls)

    title: Title | None = None
    starts_at: AwareDatetime | None = None
    duration_minutes: Duration | None = None
    mode: Mode | None = None
    lobby: bool | None = None
    sites: list[SiteCode] | None = Field(None, max_length=MAX_INVITEES)
    members: list[Username] | None = Field(None, max_length=MAX_INVITEES)
    hosts: list[Username] | None = Field(None, max_length=MAX_INVITEES)

    @model_validator(mode="after")
    def _no_nulls(self) -> RoomPatch:
        # null would mean "unset", which no field allows: say so rather than ignore it.
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} must not be null")
        if not self.model_fields_set:
            raise ValueError("nothing to change: give at least one field")
        return self


class InvitationCreate(_Request):
    """``POST /api/v1/rooms/{slug}/invitations``: mint an invitation link. Give `expires_at`
    or `expires_in_hours` (not both); without either the link lasts 24 hours."""

    role: InvitationRole = "member"
    site: SiteCode | None = None
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | None = None
    expires_at: AwareDatetime | None = None
    expires_in_hours: Annotated[int, Field(ge=1, le=MAX_INVITE_HOURS)] | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> InvitationCreate:
        if self.expires_at is not None and self.expires_in_hours is not None:
            raise ValueError("give expires_at or expires_in_hours, not both")
        return self


class Room(BaseModel):
    """A room as the API shows it."""

    slug: str
    title: str
    state: State
    starts_at: datetime
    ends_at: datetime
    duration_minutes: int
    mode: Mode
    lobby: bool
    created_by: str = Field(description="username of the account that scheduled it")
    your_role: Literal["host", "member"]
    sites: list[str]
    members: list[str]
    hosts: list[str]
    started_at: datetime | None
    ended_at: datetime | None
    join_url: str


class RoomList(BaseModel):
    """The caller's rooms: live and upcoming by start time, then the last 100 ended."""

    rooms: list[Room]


class Invitation(BaseModel):
    """A minted invitation: the link is the whole permission, keep it like a password."""

    token: str
    url: str
    expires_at: datetime
    role: InvitationRole
    site: str | None


class RecordingChange(_Request):
    """Start or stop recording the room's live meeting."""

    action: Literal["start", "stop"]


class RecordingStatus(BaseModel):
    """Whether the room's live meeting is being recorded now, and which recording."""

    recording: bool
    recording_id: int


class Me(BaseModel):
    """The account the request acts for."""

    id: int
    username: str
    display_name: str
    role: Literal["admin", "host", "member", "archivist"]
    site: str | None
    can_create_rooms: bool
    auth: Literal["token", "session"]


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, for programs: bad_request, not_found, …")
    message: str = Field(description="for people, Vietnamese / English")


class Error(BaseModel):
    """Every error answer."""

    error: ErrorDetail
