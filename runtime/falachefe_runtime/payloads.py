"""The jobs' payloads: what each job name on each queue must carry.

The original app is TypeScript: its jobs are camelCase JSON
(``{"messageData": {"phoneNumber": ...}}``, as the seed's workers read
``job.data.messageData`` and ``job.data.crewData``). The models take those
names as aliases and also accept snake_case. Unknown keys are ignored (a
newer producer may send more); missing or malformed ones fail the job
permanently, naming the field. Free text must also be storable: PostgreSQL
refuses NUL and text that is not valid UTF-8.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel


def storable(text: str) -> str:
    """``text`` if PostgreSQL can store it as ``text``: no NUL, no lone surrogate (not encodable as UTF-8).

    Refused here, the job fails at once naming the field; let through, it
    would fail each attempt inside the database with an encoding error that
    names none.
    """
    if "\x00" in text:
        raise ValueError("contains NUL (U+0000), which PostgreSQL text cannot hold")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"contains an unpaired surrogate at character {error.start}, which is not valid UTF-8"
        ) from None
    return text


#: A phone number in E.164 form: ``+`` then 8 to 15 digits, no leading zero.
PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{7,14}$")]
#: A one-time code as the user types it back: six digits.
LinkCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
MessageText = Annotated[str, StringConstraints(min_length=1, max_length=4096), AfterValidator(storable)]
ProviderMessageId = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(storable)]

# Job names: the first two are the seed's.
PROCESS_MESSAGE = "process-message"
PROCESS_CREW = "process-crew"
REQUEST_LINK_CODE = "request-link-code"
VERIFY_LINK_CODE = "verify-link-code"
SEND_MESSAGE = "send-message"
EXPIRE_SESSIONS = "expire-sessions"
CLEAN_CACHE = "clean-cache"
AGGREGATE_METRICS = "aggregate-metrics"


class _Payload(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class InboundMessage(_Payload):
    """A WhatsApp message as the provider webhook delivered it to the original app."""

    phone_number: PhoneNumber
    company_id: UUID
    text: MessageText
    provider_message_id: ProviderMessageId
    #: When the provider received it; epoch seconds/milliseconds or ISO 8601.
    timestamp: datetime


class ProcessMessage(_Payload):
    """``whatsapp-processing`` / ``process-message``."""

    message_data: InboundMessage


class CrewRequest(_Payload):
    """An authorized message for the company's crew, with who sent it."""

    company_id: UUID
    user_id: UUID
    session_id: UUID
    phone_number: PhoneNumber
    text: MessageText
    provider_message_id: ProviderMessageId
    received_at: AwareDatetime


class ProcessCrew(_Payload):
    """``crewai-processing`` / ``process-crew``."""

    crew_data: CrewRequest


class LinkCodeRequest(_Payload):
    """``whatsapp-processing`` / ``request-link-code``: send a one-time code to this phone."""

    company_id: UUID
    phone_number: PhoneNumber


class LinkCodeVerify(_Payload):
    """``whatsapp-processing`` / ``verify-link-code``: the code the user typed back."""

    company_id: UUID
    phone_number: PhoneNumber
    code: LinkCode


class OutboundKind(enum.StrEnum):
    REPLY = "reply"
    LINK_CODE = "link-code"
    REFUSAL = "refusal"


class OutboundMessage(_Payload):
    """``whatsapp-outbound`` / ``send-message``: for the app's WhatsApp sender to deliver."""

    company_id: UUID
    phone_number: PhoneNumber
    kind: OutboundKind
    text: MessageText
    #: The inbound message this answers, when it answers one.
    reply_to: ProviderMessageId | None = None


class AdminTask(_Payload):
    """``admin-tasks`` jobs: every task takes an optional batch size."""

    batch_size: int = Field(1_000, ge=1, le=100_000)
