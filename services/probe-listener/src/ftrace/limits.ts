/**
 * Hard ceilings applied to everything the guest sends before it is parsed. The guest is
 * untrusted: none of these is derived from a length the guest reports.
 */

/** Longest `events/<system>/<event>/format` text we parse (kprobes with 128 args fit easily). */
export const MAX_FORMAT_TEXT_BYTES = 256 * 1024;
/** Longest `events/header_page` text we parse. */
export const MAX_HEADER_PAGE_TEXT_BYTES = 16 * 1024;
/** Most fields (common + own) accepted in one event format. */
export const MAX_FIELDS = 512;
/** Longest line looked at in any format text; longer lines are rejected. */
export const MAX_LINE_CHARS = 4096;
/** Field offsets/sizes and page layout offsets above this are nonsense (a sub-buffer is ≤ 1 MiB). */
export const MAX_OFFSET = 1 << 20;
/** Longest event/system/field name accepted. */
export const MAX_NAME_CHARS = 256;
