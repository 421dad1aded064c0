// map_file.cc — helpers for sendmail-style map files.
#include "mx/common/map_file.h"

#include <fstream>
#include <sstream>

#include "mx/common/address.h"

namespace mx {

Status MapError(const std::string& name, int line, const std::string& what) {
  return Status(Code::kInvalidArgument, name + ":" + std::to_string(line) + ": " + what);
}

bool IsMapComment(std::string_view line) {
  auto t = Trim(line);
  return t.empty() || t.front() == '#';
}

std::pair<std::string_view, std::string_view> SplitMapKey(std::string_view line) {
  line = Trim(line);
  size_t ws = line.find_first_of(" \t");
  if (ws == std::string_view::npos) return {line, {}};
  return {line.substr(0, ws), Trim(line.substr(ws))};
}

Result<std::string> ReadMapFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status(Code::kNotFound, path + ": cannot read map file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mx
