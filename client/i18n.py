"""Messages a commune officer reads, in Vietnamese first and English.

The language is ``--lang`` when given, else Vietnamese when the locale says
so (``LC_ALL``, ``LC_MESSAGES``, ``LANG`` starting with ``vi``), else English.
"""

from __future__ import annotations

import os

__all__ = ["Messages", "pick_language"]

CATALOG: dict[str, tuple[str, str]] = {
    "plain_http": ("Lưu ý: máy chủ dùng http, không có TLS; nội dung hồ sơ vẫn được niêm phong "
                   "nhưng người khác trên đường truyền thấy được thời điểm và dung lượng gửi.",
                   "Note: the server URL is plain http, without TLS; dossier contents stay "
                   "sealed, but others on the path can see when and how much is sent."),
    "enrolled": ("Đã đăng ký máy trạm {agent} cho xã {commune}.",
                 "Enrolled agent {agent} for commune {commune}."),
    "added_none": ("Không thêm hồ sơ nào.", "No dossier was added."),
    "invalid_dossiers": ("Hồ sơ không hợp lệ, không hồ sơ nào được thêm:",
                         "Invalid dossiers; nothing was added:"),
    "invalid_input": ("Dữ liệu không hợp lệ:", "Invalid input:"),
    "bad_json": ("Không đọc được JSON ({detail}).", "Cannot read JSON ({detail})."),
    "bad_port": ("--ui-port phải từ 0 đến 65535.", "--ui-port must be between 0 and 65535."),
    "cannot_read": ("Không đọc được tệp {path}: {detail}", "Cannot read {path}: {detail}"),
    "updated": ("Đã ghi nhận trạng thái mới (số thứ tự {seq}).",
                "Status change saved (seq {seq})."),
    "verify_ok": ("Hàng đợi nguyên vẹn: {count} bản ghi đã kiểm tra.",
                  "Queue intact: {count} records checked."),
    "verify_bad": ("Hàng đợi bị hỏng tại bản ghi số {seq} (kỳ {epoch}): {reason}.",
                   "Queue damaged at seq {seq} (epoch {epoch}): {reason}."),
    "document_bad": ("Tài liệu {sha256} trong kho bị hỏng hoặc bị mất.",
                     "Stored document {sha256} is damaged or missing."),
    "sync_done": ("Đã gửi xong: {acked} bản ghi đã đến tỉnh, không còn gì chờ gửi.",
                  "Done: {acked} records have reached the province; nothing is waiting."),
    "documents_waiting": ("Còn {count} tài liệu đính kèm chưa gửi xong ({bytes} byte).",
                          "{count} documents still uploading ({bytes} bytes left)."),
    "sync_refused": ("Máy chủ đã từ chối {refused} bản ghi (xem `status`).",
                     "The server refused {refused} records (see `status`)."),
    "status_waiting": ("{dossiers} hồ sơ chưa đồng bộ; lần đồng bộ gần nhất {ago}.",
                       "{dossiers} dossiers not yet synced; last sync {ago}."),
    "status_records": ("Chờ gửi {pending} bản ghi (hồ sơ mới và thay đổi trạng thái).",
                       "{pending} records wait (new dossiers and status changes)."),
    "status_clear": ("Mọi bản ghi đã đến tỉnh; lần đồng bộ gần nhất {ago}.",
                     "Every record has reached the province; last sync {ago}."),
    "status_reason": ("Lý do còn chờ: {reason}", "Why they wait: {reason}"),
    "ago_never": ("chưa bao giờ", "never"),
    "ago_now": ("vừa xong", "just now"),
    "ago_minutes": ("{n} phút trước", "{n} minutes ago"),
    "ago_hours": ("{n} giờ trước", "{n} hours ago"),
    "ago_days": ("{n} ngày trước", "{n} days ago"),
    "sync_waiting": ("{acked} bản ghi đã đến tỉnh; còn {pending} bản ghi chưa đồng bộ. "
                     "Lý do: {reason}",
                     "{acked} records have reached the province; {pending} records still "
                     "waiting. Reason: {reason}"),
    "reason_timeout": ("hết thời gian chờ ({seconds} giây); lỗi gần nhất: {error}",
                       "timed out after {seconds} s; last error: {error}"),
    "reason_unreachable": ("không kết nối được máy chủ đúng cách ({error})",
                           "the server could not be reached properly ({error})"),
    "reason_refused": ("máy chủ từ chối ({error})", "the server refused ({error})"),
    "reason_damaged": ("bản ghi số {seq} bị hỏng, không gửi được; chạy `sync-agent verify`",
                       "record seq {seq} is damaged and will not be sent; run `sync-agent verify`"),
    "reason_revoked": ("máy trạm này đã bị thu hồi quyền đồng bộ; hãy liên hệ cán bộ CNTT của "
                       "huyện/tỉnh để đăng ký lại",
                       "this PC's access has been revoked; ask the district or province IT "
                       "staff to enroll it again"),
    "key_rotated": ("Đã thay khóa ký của máy trạm {agent}.", "Rotated the signing key of {agent}."),
    "reason_busy": ("một lần đồng bộ khác đang chạy", "another sync is running"),
    "setup": ("Lỗi cấu hình: {detail}", "Setup problem: {detail}"),
    "refused": ("Máy chủ từ chối: {detail}", "The server refused: {detail}"),
    "unreachable": ("Không kết nối được máy chủ đúng cách: {detail}",
                    "The server could not be reached properly: {detail}"),
    "interrupted": ("Đã dừng.", "Stopped."),
    "daemon_started": ("Đang chạy đồng bộ nền cho {agent}.", "Sync daemon running for {agent}."),
    "progress": ("Đã đồng bộ {acked}/{total} bản ghi, đã gửi {kib} KiB",
                 "Synced {acked}/{total} records, {kib} KiB sent"),
    "asking_daemon": ("Dịch vụ đồng bộ nền đang chạy; đã yêu cầu nó gửi ngay và đang theo dõi.",
                      "The background sync service is running; asked it to send now and "
                      "following its progress."),
    "daemon_gone": ("Dịch vụ đồng bộ nền không trả lời ({detail}); máy này tự gửi.",
                    "The background sync service did not answer ({detail}); syncing here "
                    "instead."),
    "daemon_running": ("Dịch vụ đồng bộ nền đã chạy cho thư mục dữ liệu này rồi.",
                       "The background sync service is already running for this data "
                       "directory."),
    "reason_stopped": ("dịch vụ đồng bộ nền đang dừng", "the background sync service is "
                       "stopping"),
    "export_file": ("Đã ghi {file}: {batches} lô ({records} bản ghi), {chunks} phần tài liệu.",
                    "Wrote {file}: {batches} batches ({records} records), {chunks} document "
                    "chunks."),
    "export_done": ("Đã xuất {records} bản ghi (số {first}–{last}) và {documents} tài liệu chưa "
                    "được xác nhận vào {folder}. Mang USB lên huyện/tỉnh để nhập (`syncd "
                    "import`), rồi chạy `sync-agent import-acks` với tệp xác nhận mang về.",
                    "Exported {records} records (seq {first}–{last}) and {documents} documents "
                    "not yet acknowledged to {folder}. Take the stick to the district/province "
                    "(`syncd import`), then run `sync-agent import-acks` on the acks it brings "
                    "back."),
    "export_progress": ("Đang ghi lên USB: {file} xong, đã ghi {mib} MiB…",
                        "Writing to the stick: {file} done, {mib} MiB written…"),
    "export_nothing": ("Không có gì chờ gửi; không ghi tệp nào.",
                       "Nothing is waiting; no file written."),
    "acks_none": ("Không có tệp xác nhận (*.csacks) nào của máy này trong {folder}.",
                  "No acks file (*.csacks) for this PC in {folder}."),
    "acks_file": ("{file}: máy chủ giữ đến bản ghi số {acked}; {documents} tài liệu đã nhận đủ.",
                  "{file}: the server holds up to seq {acked}; {documents} documents complete."),
    "acks_refused": ("{file}: máy chủ từ chối một lô: {error}",
                     "{file}: the server refused a batch: {error}"),
    "acks_bad": ("{file}: không phải tệp xác nhận hợp lệ do máy chủ ký ({detail}); bỏ qua.",
                 "{file}: not a valid acks file signed by the server ({detail}); skipped."),
    "acks_stale": ("{file}: xác nhận cho kỳ {epoch} cũ, hàng đợi đang ở kỳ khác; bỏ qua.",
                   "{file}: acks for an earlier epoch {epoch}; skipped."),
    "acks_bundle_refused": ("{file}: máy chủ đã từ chối cả gói và không lưu gì từ gói này "
                            "({code}): {message}.",
                            "{file}: the server refused the whole bundle and stored nothing "
                            "from it ({code}): {message}."),
    "refusal_bad": ("{file}: không phải thông báo từ chối hợp lệ do máy chủ ký ({detail}); "
                    "bỏ qua.",
                    "{file}: not a valid refusal signed by the server ({detail}); ignored."),
    "export_failed": ("Không ghi được tệp nào vào {folder}: {detail}. Không để lại tệp dở "
                      "dang nào; hàng đợi không thay đổi.",
                      "Cannot write the bundle files into {folder}: {detail}. No partial file "
                      "was left; the queue is unchanged."),
    "write_full": ("USB hoặc ổ đĩa đã đầy; hãy xóa bớt hoặc dùng USB khác",
                   "the stick or disk is full; free some space or use another stick"),
    "write_denied": ("không có quyền ghi hoặc USB đang khóa chỉ cho đọc",
                     "no permission to write there, or the stick is read-only"),
    "write_not_folder": ("đường dẫn này (hoặc một phần của nó) không phải là thư mục",
                         "that path (or a part of it) is not a folder"),
}


def pick_language(explicit: str | None) -> str:
    if explicit in ("vi", "en"):
        return explicit
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var)
        if value:
            return "vi" if value.lower().startswith("vi") else "en"
    return "en"


class Messages:
    def __init__(self, lang: str) -> None:
        self.lang = lang

    def __call__(self, key: str, **values: object) -> str:
        vi, en = CATALOG[key]
        return (vi if self.lang == "vi" else en).format(**values)
