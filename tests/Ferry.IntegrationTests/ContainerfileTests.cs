using System.Text.Json;
using System.Text.RegularExpressions;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 9: deploy/container has one file per part, built from scripts/publish.sh's output. No container engine runs
/// here, so each file is parsed and checked for what matters, and linted with dockerfilelint.
/// </summary>
public sealed partial class ContainerfileTests
{
    private static readonly string Folder = Path.Combine(Repository.Root, "deploy", "container");

    public static TheoryData<string> Parts => new(["controller", "connector", "relay"]);

    [Theory]
    [MemberData(nameof(Parts))]
    public async Task The_container_file_runs_the_published_ferry_part_as_a_non_root_user(string part)
    {
        var instructions = Parse(await File.ReadAllTextAsync(Path.Combine(Folder, $"{part}.Containerfile"), TestContext.Current.CancellationToken));
        var stages = instructions.Where(i => i.Op == "FROM").Select(i => i.Args).ToList();
        Assert.Equal("debian:12-slim", stages[^1]);
        var final = instructions.SkipWhile(i => i != instructions.Last(i => i.Op == "FROM")).ToList();

        // The architecture stages read the folders publish.sh writes by default.
        Assert.Contains("out=artifacts/publish", await File.ReadAllTextAsync(Path.Combine(Repository.Root, "scripts", "publish.sh"), TestContext.Current.CancellationToken), StringComparison.Ordinal);
        Assert.Contains(instructions, i => i.Op == "COPY" && i.Args == "artifacts/publish/linux-x64/ /");
        Assert.Contains(instructions, i => i.Op == "COPY" && i.Args == "artifacts/publish/linux-arm64/ /");
        Assert.Contains("publish-${TARGETARCH} AS publish", stages);
        Assert.Contains(final, i => i.Op == "COPY" && i.Args.StartsWith("--from=publish ", StringComparison.Ordinal) && i.Args.EndsWith(" / /opt/ferry/", StringComparison.Ordinal));

        var user = Assert.Single(final, i => i.Op == "USER").Args;
        Assert.DoesNotMatch("^(root|0)(:|$)", user);
        var run = string.Join(' ', final.Where(i => i.Op == "RUN").Select(i => i.Args));
        Assert.Contains($"--uid {user.Split(':')[0]} ", run, StringComparison.Ordinal);
        foreach (var package in await RuntimePackagesAsync())
        {
            Assert.Matches($@"apt-get install [^&]*\b{Regex.Escape(package)}\b", run);
        }
        Assert.Contains(final, i => i.Op == "VOLUME" && i.Args == "/var/lib/ferry");

        var entrypoint = JsonSerializer.Deserialize<string[]>(Assert.Single(final, i => i.Op == "ENTRYPOINT").Args)!;
        Assert.Equal(["/opt/ferry/ferry", part], entrypoint);
        // Every flag the default command passes exists in this build of 'ferry PART'.
        var cmd = JsonSerializer.Deserialize<string[]>(Assert.Single(final, i => i.Op == "CMD").Args)!;
        var help = await ExternalProcess.CaptureAsync(FerryProcess.BinaryPath, [part, "--help"], TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.All(cmd.Where(a => a.StartsWith("--", StringComparison.Ordinal)), flag => Assert.Contains(flag + " ", help.Stdout, StringComparison.Ordinal));
        Assert.Contains("/var/lib/ferry", string.Join(' ', cmd), StringComparison.Ordinal);

        var expose = string.Join(' ', final.Where(i => i.Op == "EXPOSE").Select(i => i.Args));
        Assert.Equal(part switch { "controller" => "8443/tcp", "relay" => "30000/tcp 3478/udp", _ => "" }, expose);
        // A HEALTHCHECK would need a program the image does not have (no curl; ferry has no probe command).
        Assert.DoesNotContain(instructions, i => i.Op == "HEALTHCHECK");
        // Only the published binaries are sent to the builder.
        Assert.Contains("!artifacts/publish/", await File.ReadAllTextAsync(Path.Combine(Folder, $"{part}.Containerfile.dockerignore"), TestContext.Current.CancellationToken), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_container_files_pass_dockerfilelint()
    {
        Assert.SkipUnless(File.Exists(DeployTools.DockerfileLint), $"dockerfilelint is not installed: run 'npm ci' in {DeployTools.Folder} (scripts/test.sh does it)");
        var files = Directory.GetFiles(Folder, "*.Containerfile").Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(["connector.Containerfile", "controller.Containerfile", "relay.Containerfile"], files.Select(Path.GetFileName));
        var lint = await ExternalProcess.CaptureAsync("node", [DeployTools.DockerfileLint, "-c", Folder, "-j", .. files], TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.True(lint.ExitCode == 0 && lint.Stdout.Contains("\"totalIssues\":0", StringComparison.Ordinal), $"dockerfilelint found issues:\n{lint}");
    }

    /// <summary>FERRY_RUNTIME_PACKAGES in scripts/common.sh: what a host running the published binary needs.</summary>
    internal static async Task<string[]> RuntimePackagesAsync()
    {
        var common = await File.ReadAllTextAsync(Path.Combine(Repository.Root, "scripts", "common.sh"), TestContext.Current.CancellationToken);
        var list = RuntimePackagesPattern().Match(common);
        Assert.True(list.Success, "scripts/common.sh has no FERRY_RUNTIME_PACKAGES=(...)");
        var packages = list.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("libngtcp2-9", packages);
        return packages;
    }

    private sealed record Instruction(string Op, string Args);

    /// <summary>Instructions with their continuation lines joined; comments and blank lines dropped.</summary>
    private static List<Instruction> Parse(string text)
    {
        var joined = Regex.Replace(text, @"\\\r?\n", " ");
        return [.. joined.Split('\n')
            .Select(l => l.Trim())
            .Where(l => l.Length > 0 && !l.StartsWith('#'))
            .Select(l => { var space = l.IndexOf(' ', StringComparison.Ordinal); return new Instruction(l[..space].ToUpperInvariant(), Regex.Replace(l[(space + 1)..].Trim(), @"\s+", " ")); })];
    }

    [GeneratedRegex(@"FERRY_RUNTIME_PACKAGES=\(([^)]*)\)")]
    private static partial Regex RuntimePackagesPattern();
}
