# CMake package of etcd_registry (the C ABI of the Rust etcd-registry library), installed by
# ffi/install.sh into PREFIX/lib/cmake/etcd_registry/. Relocatable: paths are relative to this file.
#
#   find_package(etcd_registry 0.1 CONFIG REQUIRED)     # with -DCMAKE_PREFIX_PATH=PREFIX
#   target_link_libraries(app PRIVATE etcd_registry::etcd_registry)
#
# Imported targets:
#   etcd_registry::etcd_registry_shared  libetcd_registry.so (absent after install.sh --static);
#                                        programs get an rpath to PREFIX/lib, as with pkg-config
#   etcd_registry::etcd_registry_static  libetcd_registry.a and the system libraries it needs
#   etcd_registry::etcd_registry         the shared library if installed, else the archive; set
#                                        ETCD_REGISTRY_USE_STATIC=ON before find_package for the
#                                        archive always
# Variables: etcd_registry_VERSION (e.g. 0.1.0), etcd_registry_INCLUDE_DIR,
# etcd_registry_STATIC_LIBRARY, etcd_registry_SHARED_LIBRARY (if installed).

cmake_minimum_required(VERSION 3.16)

get_filename_component(_etcd_registry_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(etcd_registry_INCLUDE_DIR "${_etcd_registry_prefix}/include")
set(etcd_registry_STATIC_LIBRARY "${_etcd_registry_prefix}/lib/libetcd_registry.a")
if(EXISTS "${_etcd_registry_prefix}/lib/libetcd_registry.so")
  set(etcd_registry_SHARED_LIBRARY "${_etcd_registry_prefix}/lib/libetcd_registry.so")
endif()

foreach(_etcd_registry_file "${etcd_registry_INCLUDE_DIR}/etcd_registry.h" "${etcd_registry_STATIC_LIBRARY}")
  if(NOT EXISTS "${_etcd_registry_file}")
    set(${CMAKE_FIND_PACKAGE_NAME}_FOUND FALSE)
    set(${CMAKE_FIND_PACKAGE_NAME}_NOT_FOUND_MESSAGE "${_etcd_registry_file} is missing: reinstall with ffi/install.sh")
    return()
  endif()
endforeach()

include(CMakeFindDependencyMacro)
find_dependency(Threads)

if(NOT TARGET etcd_registry::etcd_registry_static)
  add_library(etcd_registry::etcd_registry_static STATIC IMPORTED)
  set_target_properties(etcd_registry::etcd_registry_static PROPERTIES
    IMPORTED_LOCATION "${etcd_registry_STATIC_LIBRARY}"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "${etcd_registry_INCLUDE_DIR}"
    # What the Rust standard library in the archive needs (rustc --print native-static-libs).
    INTERFACE_LINK_LIBRARIES "@SYSTEM_LIBS@")
endif()

if(etcd_registry_SHARED_LIBRARY AND NOT TARGET etcd_registry::etcd_registry_shared)
  add_library(etcd_registry::etcd_registry_shared SHARED IMPORTED)
  set_target_properties(etcd_registry::etcd_registry_shared PROPERTIES
    IMPORTED_LOCATION "${etcd_registry_SHARED_LIBRARY}"
    # The library has no SONAME (cargo sets none): link it as -letcd_registry, not by its path.
    IMPORTED_NO_SONAME TRUE
    INTERFACE_INCLUDE_DIRECTORIES "${etcd_registry_INCLUDE_DIR}"
    # Found at run time without LD_LIBRARY_PATH, installed or not (the .pc file does the same).
    INTERFACE_LINK_OPTIONS "LINKER:-rpath,${_etcd_registry_prefix}/lib")
endif()

if(NOT TARGET etcd_registry::etcd_registry)
  add_library(etcd_registry::etcd_registry INTERFACE IMPORTED)
  if(TARGET etcd_registry::etcd_registry_shared AND NOT ETCD_REGISTRY_USE_STATIC)
    set_target_properties(etcd_registry::etcd_registry PROPERTIES
      INTERFACE_LINK_LIBRARIES etcd_registry::etcd_registry_shared)
  else()
    set_target_properties(etcd_registry::etcd_registry PROPERTIES
      INTERFACE_LINK_LIBRARIES etcd_registry::etcd_registry_static)
  endif()
endif()

unset(_etcd_registry_prefix)
unset(_etcd_registry_file)
