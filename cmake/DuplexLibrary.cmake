# libduplex: the shared and the static library users link, made of the
# layers' objects (DX_LAYER_TARGETS, compiled once with -fPIC and hidden
# visibility). They carry include/ only; src/ stays private.
#
#   duplex_shared  libduplex.so.VERSION, SONAME libduplex.so.MAJOR; exports
#                  only what DX_API marks (every name starts with dx_; the
#                  pkg_symbols test checks it with nm -D)
#   duplex_static  libduplex.a, one archive with every layer
#
# Aliases duplex::duplex and duplex::duplex_static match the names the
# installed CMake package gives, so add_subdirectory and find_package users
# write the same target_link_libraries line.
set(dx_objects "")
foreach(layer ${DX_LAYER_TARGETS})
  list(APPEND dx_objects $<TARGET_OBJECTS:${layer}>)
endforeach()

include(GNUInstallDirs)
set(dx_lib_include
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

add_library(duplex_shared SHARED ${dx_objects})
target_include_directories(duplex_shared PUBLIC ${dx_lib_include})
target_link_libraries(duplex_shared PRIVATE OpenSSL::SSL OpenSSL::Crypto ZLIB::ZLIB Threads::Threads ${JANSSON_LINK_LIBRARIES}
  ${HIREDIS_LINK_LIBRARIES})
set_target_properties(duplex_shared PROPERTIES
  OUTPUT_NAME duplex
  EXPORT_NAME duplex
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  LINKER_LANGUAGE C)
# A missing symbol is a link error here, not a surprise in the user's link.
# (Not under the sanitizers: their runtime is linked into executables only.)
if(NOT DX_SANITIZE AND NOT DX_SANITIZE_THREAD)
  target_link_options(duplex_shared PRIVATE LINKER:--no-undefined)
endif()
# Nothing but our own symbols leaves the library (OpenSSL's stay OpenSSL's).
target_link_options(duplex_shared PRIVATE LINKER:--exclude-libs,ALL)

add_library(duplex_static STATIC ${dx_objects})
target_include_directories(duplex_static PUBLIC ${dx_lib_include})
# jansson (the gateway's JSON), zlib (permessage-deflate) and hiredis (the
# Redis bus) by plain name, so the exported target needs no imported target
# in the user's project.
target_link_libraries(duplex_static PUBLIC OpenSSL::SSL OpenSSL::Crypto Threads::Threads jansson z hiredis)
set_target_properties(duplex_static PROPERTIES
  OUTPUT_NAME duplex
  EXPORT_NAME duplex_static
  LINKER_LANGUAGE C)

add_library(duplex::duplex ALIAS duplex_shared)
add_library(duplex::duplex_static ALIAS duplex_static)
