# Install rules: `cmake --install BUILD [--prefix P]`, `make install PREFIX=P
# DESTDIR=D`. What lands where (relative to the prefix):
#
#   bin/duplex                                  the CLI
#   lib/libduplex.so.X.Y.Z, .so.X, .so          the shared library (SONAME .so.X)
#   lib/libduplex.a                             the static library
#   include/duplex/*.h                          the public headers
#   lib/pkgconfig/duplex.pc                     pkg-config (relocatable: ${pcfiledir})
#   lib/cmake/duplex/duplexConfig.cmake, duplexConfigVersion.cmake, duplexTargets*.cmake
#                                               find_package(duplex): duplex::duplex,
#                                               duplex::duplex_static
#
# ("lib" is CMAKE_INSTALL_LIBDIR, e.g. lib/x86_64-linux-gnu under /usr on Debian.)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DX_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/duplex)

install(TARGETS duplex RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS duplex_shared duplex_static EXPORT duplexTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/duplex
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")

install(EXPORT duplexTargets NAMESPACE duplex:: DESTINATION ${DX_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/duplexConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/duplexConfig.cmake
                              INSTALL_DESTINATION ${DX_CMAKE_DIR})
# 0.x: a minor version may break the API, so only the same minor matches.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/duplexConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/duplexConfig.cmake ${PROJECT_BINARY_DIR}/duplexConfigVersion.cmake
        DESTINATION ${DX_CMAKE_DIR})

# duplex.pc finds its prefix from where it lies, so `cmake --install
# --prefix` and DESTDIR staging both give a correct file.
file(RELATIVE_PATH DX_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" DX_PC_TO_PREFIX "${DX_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/duplex.pc.in ${PROJECT_BINARY_DIR}/duplex.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/duplex.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
