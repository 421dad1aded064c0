// map_file.h — the line format shared by sendmail-style map files (access,
// virtusertable, mailertable, class files): one "key<whitespace>value" per
// line, '#' comments, errors reported as "file:line: what".
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "mx/common/result.h"

namespace mx {

// An InvalidArgument status "name:line: what".
Status MapError(const std::string& name, int line, const std::string& what);

// Whether a line is blank or a '#' comment.
bool IsMapComment(std::string_view line);

// Splits "key<whitespace>value" (value trimmed, may be empty).
std::pair<std::string_view, std::string_view> SplitMapKey(std::string_view line);

// Reads a whole file; errors name the path.
Result<std::string> ReadMapFile(const std::string& path);

// Calls fn(line_number, line) for every line without its terminator (CRLF or
// LF); stops at the first error fn returns.
template <typename Fn>
Status ForEachMapLine(std::string_view text, Fn&& fn) {
  int n = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    std::string_view line = text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
    ++n;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (Status st = fn(n, line); !st.ok()) return st;
  }
  return Status::Ok();
}

}  // namespace mx
