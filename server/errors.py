"""The few named errors of the node; each edge (Socket.IO ack, HTTP) translates them once."""

from __future__ import annotations


class GiaoBanError(Exception):
    """Base error with a stable `code` for programs and a bilingual message for people."""

    code = "internal"
    message_vi = "Lỗi máy chủ"
    message_en = "Server error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.message_en)
        self.detail = detail

    @property
    def message(self) -> str:
        text = f"{self.message_vi} / {self.message_en}"
        return f"{text}: {self.detail}" if self.detail else text

    def to_wire(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class ConfigError(GiaoBanError):
    code = "config"
    message_vi = "Cấu hình sai"
    message_en = "Invalid configuration"


class BadRequest(GiaoBanError):
    code = "bad_request"
    message_vi = "Yêu cầu không hợp lệ"
    message_en = "Bad request"


class TooLarge(GiaoBanError):
    code = "too_large"
    message_vi = "Dữ liệu quá lớn"
    message_en = "Payload too large"


class UnknownEvent(GiaoBanError):
    code = "unknown_event"
    message_vi = "Sự kiện không được hỗ trợ"
    message_en = "Unknown event"


class NotJoined(GiaoBanError):
    code = "not_joined"
    message_vi = "Chưa vào phòng họp"
    message_en = "Not in a room"


class AlreadyJoined(GiaoBanError):
    code = "already_joined"
    message_vi = "Đã ở trong phòng họp"
    message_en = "Already in a room"


class NotFound(GiaoBanError):
    code = "not_found"
    message_vi = "Không tìm thấy"
    message_en = "Not found"


class Conflict(GiaoBanError):
    code = "conflict"
    message_vi = "Thao tác không đúng thứ tự"
    message_en = "Out-of-order request"


class Forbidden(GiaoBanError):
    code = "forbidden"
    message_vi = "Không có quyền"
    message_en = "Forbidden"


class AlreadyExists(Conflict):
    """A name that must be unique is taken (a username, a site code); code stays `conflict`."""

    message_vi = "Đã tồn tại"
    message_en = "Already exists"


class LoginFailed(GiaoBanError):
    """Wrong username or password: the same error for both, so names cannot be probed."""

    code = "login_failed"
    message_vi = "Sai tên đăng nhập hoặc mật khẩu"
    message_en = "Wrong username or password"


class StoreError(GiaoBanError):
    """The database cannot be opened, reached or migrated."""

    code = "store"
    message_vi = "Lỗi cơ sở dữ liệu"
    message_en = "Database error"


class Unauthenticated(GiaoBanError):
    """Neither a signed-in session nor an invitation token came with the request."""

    code = "unauthenticated"
    message_vi = "Cần đăng nhập hoặc dùng đường mời"
    message_en = "Sign in or use an invitation link"


class InvalidToken(GiaoBanError):
    """An invitation or API token that is forged, expired or for another room."""

    code = "invalid_token"
    message_vi = "Đường mời không hợp lệ hoặc đã hết hạn"
    message_en = "The invitation link is invalid or has expired"


class RoomEnded(GiaoBanError):
    code = "room_ended"
    message_vi = "Cuộc họp đã kết thúc"
    message_en = "The meeting has ended"


class RoomLocked(GiaoBanError):
    code = "room_locked"
    message_vi = "Phòng họp đã khóa, không nhận thêm người"
    message_en = "The room is locked: no one new may join"


class TooMany(GiaoBanError):
    """Too many requests of one kind in a short time (chat messages): try again shortly."""

    code = "rate_limited"
    message_vi = "Gửi quá nhanh, vui lòng chờ một chút"
    message_en = "Too many requests: wait a moment"


class NoRecorder(GiaoBanError):
    """Recording is done by `giaoban record` workers and none is running."""

    code = "no_recorder"
    message_vi = "Không có máy ghi hình nào đang chạy"
    message_en = "No recording worker is running"
