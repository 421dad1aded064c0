// thread_name.h — names the calling thread for top -H, perf and gdb.
#pragma once

#include <pthread.h>

#include <string>

namespace mx {

// Linux keeps 15 characters; longer names are cut.
inline void SetThreadName(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace mx
