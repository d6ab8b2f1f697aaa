using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 9: scripts/publish.sh makes the self-contained 'ferry' for linux-x64 and linux-arm64 (runtime packs through NuGet restore).</summary>
[Collection(nameof(PublishTests))]
public sealed class PublishTests
{
    private static readonly string Script = Path.Combine(Repository.Root, "scripts", "publish.sh");

    [Fact]
    public async Task Publish_makes_a_self_contained_ferry_for_x64_and_arm64()
    {
        var output = Directory.CreateTempSubdirectory("ferry-publish-").FullName;
        try
        {
            // Both in one run: the second reuses the first one's restore and compiled projects.
            var publish = await RunAsync(TimeSpan.FromMinutes(15), "-o", output, "linux-x64", "linux-arm64");
            Assert.True(publish.ExitCode == 0, $"publish failed:\n{publish}");
            foreach (var (rid, machine) in new[] { ("linux-x64", 62), ("linux-arm64", 183) })
            {
                var binary = Path.Combine(output, rid, "ferry");
                Assert.True(File.Exists(binary), $"{binary} is missing; the folder has: {string.Join(' ', Directory.GetFiles(Path.Combine(output, rid)).Select(Path.GetFileName).Take(20))}");
                Assert.True(File.GetUnixFileMode(binary).HasFlag(UnixFileMode.UserExecute), $"{binary} is not executable");
                var header = new byte[20];
                await using (var file = File.OpenRead(binary))
                {
                    await file.ReadExactlyAsync(header, TestContext.Current.CancellationToken);
                }
                Assert.Equal("\u007fELF"u8.ToArray(), header[..4]);
                Assert.Equal(2, header[4]); // ELFCLASS64
                Assert.Equal(machine, BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(18, 2)));
                // Self-contained: the runtime is in the folder, so the target needs no .NET installed.
                Assert.True(File.Exists(Path.Combine(output, rid, "libcoreclr.so")), $"{rid}: libcoreclr.so is not in the output, so it is not self-contained");
            }
            var version = await ExternalProcess.CaptureAsync(Path.Combine(output, "linux-x64", "ferry"), ["--version"], TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
            Assert.True(version.ExitCode == 0 && version.Stdout.StartsWith("0.", StringComparison.Ordinal), $"the published ferry does not run:\n{version}");
            var help = await ExternalProcess.CaptureAsync(Path.Combine(output, "linux-x64", "ferry"), ["--help"], TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
            Assert.All(new[] { "controller", "connector", "relay", "client", "admin" }, part => Assert.Contains(part, help.Stdout, StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(output, recursive: true);
        }
    }

    [Fact]
    public async Task Publish_refuses_an_unknown_RID_with_the_ones_it_knows()
    {
        var result = await RunAsync(TimeSpan.FromSeconds(60), "linux-x86");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("unknown RID 'linux-x86': give linux-x64 or linux-arm64", result.Stderr, StringComparison.Ordinal);
    }

    private static Task<CommandResult> RunAsync(TimeSpan timeout, params string[] args)
    {
        var info = new ProcessStartInfo("/bin/bash") { WorkingDirectory = Repository.Root };
        info.ArgumentList.Add(Script);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        return ExternalProcess.CaptureAsync(info, timeout, TestContext.Current.CancellationToken);
    }
}

/// <summary>
/// Publishing both architectures keeps both cores busy for minutes; alone, after the parallel tests, it cannot starve the
/// tests that hold processes to time bounds (failover within 3 s, revocation within 2 s).
/// </summary>
[CollectionDefinition(nameof(PublishTests), DisableParallelization = true)]
public sealed class PublishCollection;
