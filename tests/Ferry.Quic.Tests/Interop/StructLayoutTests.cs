using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Quic.Interop;

namespace Ferry.Quic.Tests.Interop;

/// <summary>A wrong mirror corrupts memory silently, so every mirrored struct is checked against the installed C headers.</summary>
public sealed class StructLayoutTests
{
    private static readonly Type[] s_mirrored = typeof(ngtcp2_cid).Assembly.GetTypes()
        .Where(t => t.Namespace == typeof(ngtcp2_cid).Namespace && t.IsValueType && !t.IsEnum && !t.IsNested
            && t.IsLayoutSequential | t.IsExplicitLayout && char.IsLower(t.Name[0]))
        .OrderBy(t => t.Name, StringComparer.Ordinal)
        .ToArray();

    [Fact]
    public async Task Mirrors_match_sizeof_and_offsetof_of_installed_headers()
    {
        var gcc = ProcessRunner.FindOnPath("gcc");
        Assert.SkipWhen(gcc is null, "gcc is not installed; cannot compile the layout probe (apt-get install gcc)");
        Assert.SkipUnless(File.Exists("/usr/include/ngtcp2/ngtcp2_crypto_gnutls.h") && File.Exists("/usr/include/gnutls/gnutls.h"),
            "ngtcp2/GnuTLS headers missing (apt-get install libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev)");

        Assert.True(s_mirrored.Length >= 20, $"only {s_mirrored.Length} mirrored structs found");
        var expected = new SortedDictionary<string, long>(StringComparer.Ordinal);
        var c = new StringBuilder("""
            #define _GNU_SOURCE
            #include <stdio.h>
            #include <stddef.h>
            #include <ngtcp2/ngtcp2.h>
            #include <ngtcp2/ngtcp2_crypto.h>
            #include <ngtcp2/ngtcp2_crypto_gnutls.h>
            #include <gnutls/gnutls.h>
            #include <netinet/in.h>
            #include <sys/socket.h>
            #include <sys/uio.h>
            int main(void) {

            """);
        foreach (var type in s_mirrored)
        {
            // The libc structs (sockaddr_*, iovec, msghdr, mmsghdr, cmsghdr) are only reachable through "struct".
            var cName = type.Name.StartsWith("ngtcp2", StringComparison.Ordinal) || type.Name.StartsWith("gnutls", StringComparison.Ordinal) ? type.Name : "struct " + type.Name;
            c.Append(CultureInfo.InvariantCulture, $"  printf(\"{type.Name} %zu\\n\", sizeof({cName}));\n");
            expected[type.Name] = SizeOf(type);
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public))
            {
                c.Append(CultureInfo.InvariantCulture, $"  printf(\"{type.Name}.{field.Name} %zu\\n\", offsetof({cName}, {field.Name}));\n");
                expected[type.Name + "." + field.Name] = Marshal.OffsetOf(type, field.Name).ToInt64();
            }
        }

        c.Append("  return 0;\n}\n");
        var dir = Directory.CreateTempSubdirectory("ferry-layout-");
        try
        {
            var src = Path.Combine(dir.FullName, "probe.c");
            var exe = Path.Combine(dir.FullName, "probe");
            await File.WriteAllTextAsync(src, c.ToString(), TestContext.Current.CancellationToken);
            var build = await ProcessRunner.RunAsync(gcc!, ["-o", exe, src], TimeSpan.FromSeconds(60));
            Assert.True(build.ExitCode == 0, "gcc failed:\n" + build.Stderr);
            var run = await ProcessRunner.RunAsync(exe, [], TimeSpan.FromSeconds(20));
            Assert.Equal(0, run.ExitCode);

            var actual = run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split(' '))
                .ToDictionary(p => p[0], p => long.Parse(p[1], CultureInfo.InvariantCulture), StringComparer.Ordinal);
            var mismatches = expected.Where(kv => actual[kv.Key] != kv.Value)
                .Select(kv => $"{kv.Key}: C# {kv.Value}, C {actual[kv.Key]}").ToList();
            Assert.True(mismatches.Count == 0, "struct mirrors differ from the C headers:\n" + string.Join('\n', mismatches));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static long SizeOf(Type t) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(t).Invoke(null, null)!;
}
