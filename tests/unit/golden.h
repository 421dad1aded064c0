// golden.h — compare output with a checked-in .ref file; MX_UPDATE_GOLDEN=1 rewrites it.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace mx::test {

inline std::string DataPath(const std::string& rel) {
  const char* root = std::getenv("MX_TEST_DATA");
  return std::string(root ? root : "tests/unit") + "/" + rel;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void ExpectGolden(const std::string& rel, const std::string& actual) {
  std::string path = DataPath(rel);
  if (std::getenv("MX_UPDATE_GOLDEN")) {
    std::ofstream(path, std::ios::binary) << actual;
    return;
  }
  std::ifstream probe(path);
  ASSERT_TRUE(probe.good()) << "missing golden file " << path << " (run with MX_UPDATE_GOLDEN=1 to create)";
  EXPECT_EQ(ReadFile(path), actual) << "golden mismatch: " << path;
}

}  // namespace mx::test
