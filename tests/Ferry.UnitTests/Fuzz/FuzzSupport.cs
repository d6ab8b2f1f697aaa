using System.Buffers.Binary;
using System.Diagnostics;
using System.Globalization;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// A small property-based fuzzer for the network-facing parsers: seed inputs from <c>Corpus/&lt;parser&gt;/</c> (and ones the
/// test builds), mutated with a seeded <see cref="Random"/>; each input goes through a property that throws on a violation.
/// FERRY_FUZZ_ITERATIONS sets the inputs per test (the CI default keeps every fuzz test together well under 20 s);
/// FERRY_FUZZ_SEED replays or explores another seed.
/// </summary>
internal static class Fuzzer
{
    /// <summary>Allocation allowed per input beyond a multiple of its size: a parser may copy its input a few times, never more.</summary>
    public const long AllocationSlack = 1024 * 1024;

    public const int AllocationPerInputByte = 8;

    /// <summary>Inputs per test: FERRY_FUZZ_ITERATIONS, or the test's CI default.</summary>
    public static int Iterations(int ciDefault) =>
        int.TryParse(Environment.GetEnvironmentVariable("FERRY_FUZZ_ITERATIONS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var chosen) && chosen > 0
            ? chosen
            : ciDefault;

    /// <summary>FERRY_FUZZ_SEED, or the test's fixed default, so a CI run is reproducible.</summary>
    public static int Seed(int defaultSeed) =>
        int.TryParse(Environment.GetEnvironmentVariable("FERRY_FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out var chosen)
            ? chosen
            : defaultSeed;

    /// <summary>The committed seed inputs of one parser (copied next to the test assembly).</summary>
    public static byte[][] Corpus(string parser)
    {
        var directory = Path.Combine(AppContext.BaseDirectory, "Corpus", parser);
        Assert.True(Directory.Exists(directory), $"no corpus at {directory}");
        var files = Directory.GetFiles(directory).Order(StringComparer.Ordinal).Select(File.ReadAllBytes).ToArray();
        Assert.NotEmpty(files);
        return files;
    }

    public static void Log(string message)
    {
        try
        {
            TestContext.Current.TestOutputHelper?.WriteLine(message);
        }
        catch (InvalidOperationException)
        {
            // The test already ended; a late line from a background task is dropped.
        }
    }

    /// <summary>
    /// Runs <paramref name="property"/> on every seed, then on <paramref name="iterations"/> inputs from <paramref name="next"/>
    /// (by default <see cref="Next"/>: mutated seeds). The property returns whether the parser accepted the input (for the
    /// statistics) and throws when something is wrong. Every input must also stay within the allocation bound. A failure names
    /// the seed, the iteration and the input's hex, ready for the corpus.
    /// </summary>
    public static FuzzResult Run(string name, int seed, int iterations, byte[][] seeds, Func<byte[], bool> property, Func<Random, byte[][], byte[]>? next = null)
        => Run(name, seed, iterations, seeds, input => () => property(input), next);

    /// <summary>
    /// As the other overload, for properties with setup that is not the parser's cost: <paramref name="prepare"/> runs unmeasured
    /// and returns the part whose allocations count (the parse and the checks).
    /// </summary>
    public static FuzzResult Run(string name, int seed, int iterations, byte[][] seeds, Func<byte[], Func<bool>> prepare, Func<Random, byte[][], byte[]>? next = null)
    {
        Log($"{name}: seed {seed} (replay with FERRY_FUZZ_SEED={seed}), {iterations} inputs, {seeds.Length} seed inputs");
        next ??= Next;
        var random = new Random(seed);
        var watch = Stopwatch.StartNew();
        var accepted = 0;
        long maxAllocated = 0;
        // The seeds run first and unmeasured: they warm up JIT and the parsers' caches, which are not per-input costs.
        foreach (var input in seeds)
        {
            Check(name, seed, -1, input, prepare, measure: false, ref accepted, ref maxAllocated);
        }
        accepted = 0;
        for (var i = 0; i < iterations; i++)
        {
            Check(name, seed, i, next(random, seeds), prepare, measure: true, ref accepted, ref maxAllocated);
        }
        var result = new FuzzResult(iterations, accepted, maxAllocated, watch.Elapsed);
        Log($"{name}: {result}");
        return result;
    }

    private static void Check(string name, int seed, int iteration, byte[] input, Func<byte[], Func<bool>> prepare, bool measure, ref int accepted, ref long maxAllocated)
    {
        long allocated;
        bool ok;
        try
        {
            var property = prepare(input);
            t_unmeasured = 0;
            var before = GC.GetAllocatedBytesForCurrentThread();
            ok = property();
            allocated = GC.GetAllocatedBytesForCurrentThread() - before - t_unmeasured;
        }
        catch (Exception e)
        {
            throw new FuzzFailure($"{name}: seed {seed}, iteration {iteration}: {e.GetType().Name}: {e.Message}\ninput ({input.Length} bytes): {Convert.ToHexString(input)}", e);
        }
        if (measure)
        {
            maxAllocated = Math.Max(maxAllocated, allocated);
            var bound = AllocationSlack + (AllocationPerInputByte * (long)input.Length);
            if (allocated > bound)
            {
                throw new FuzzFailure($"{name}: seed {seed}, iteration {iteration}: {allocated} bytes allocated for a {input.Length}-byte input (bound {bound})\ninput: {Convert.ToHexString(input)}");
            }
        }
        if (ok)
        {
            accepted++;
        }
    }

    [ThreadStatic]
    private static long t_unmeasured;

    /// <summary>Runs checks inside a property whose allocations are the test's, not the parser's (round trips, object-graph walks).</summary>
    public static void Unmeasured(Action checks)
    {
        ArgumentNullException.ThrowIfNull(checks);
        var before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            checks();
        }
        finally
        {
            t_unmeasured += GC.GetAllocatedBytesForCurrentThread() - before;
        }
    }

    /// <summary>One input: mostly mutated seeds, sometimes noise, sometimes a huge one.</summary>
    public static byte[] Next(Random random, byte[][] seeds)
    {
        switch (random.Next(20))
        {
            case 0:
            {
                var noise = new byte[random.Next(0, 300)];
                random.NextBytes(noise);
                return noise;
            }
            case 1:
                // 64 KiB: a seed followed by noise, the largest a datagram or a frame could carry, to check allocation stays bounded.
                return Huge(random, seeds[random.Next(seeds.Length)]);
            default:
            {
                var input = seeds[random.Next(seeds.Length)];
                var edits = 1 + random.Next(random.Next(2) == 0 ? 2 : 8);
                for (var e = 0; e < edits; e++)
                {
                    input = Mutate(random, input, seeds);
                }
                return input;
            }
        }
    }

    private static byte[] Huge(Random random, byte[] seed)
    {
        var huge = new byte[64 * 1024];
        random.NextBytes(huge);
        seed.AsSpan(0, Math.Min(seed.Length, huge.Length)).CopyTo(huge);
        return huge;
    }

    /// <summary>One edit; never changes <paramref name="input"/> in place.</summary>
    public static byte[] Mutate(Random random, byte[] input, byte[][] seeds)
    {
        var bytes = (byte[])input.Clone();
        switch (random.Next(12))
        {
            case 0 when bytes.Length > 0:
                bytes[random.Next(bytes.Length)] ^= (byte)(1 << random.Next(8));
                return bytes;
            case 1 when bytes.Length > 0:
                bytes[random.Next(bytes.Length)] = Interesting[random.Next(Interesting.Length)];
                return bytes;
            case 2:
            {
                // Insert a few bytes somewhere.
                var extra = new byte[1 + random.Next(8)];
                random.NextBytes(extra);
                var at = random.Next(bytes.Length + 1);
                return [.. bytes.AsSpan(0, at), .. extra, .. bytes.AsSpan(at)];
            }
            case 3 when bytes.Length > 0:
            {
                var at = random.Next(bytes.Length);
                var count = Math.Min(bytes.Length - at, 1 + random.Next(8));
                return [.. bytes.AsSpan(0, at), .. bytes.AsSpan(at + count)];
            }
            case 4:
                return bytes[..random.Next(bytes.Length + 1)];
            case 5 when bytes.Length >= 2:
            {
                // Length-field corruption: a big-endian u16 anywhere, often an extreme.
                var at = random.Next(bytes.Length - 1);
                ushort value = random.Next(3) switch { 0 => 0, 1 => 0xFFFF, _ => (ushort)random.Next(65536) };
                BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(at), value);
                return bytes;
            }
            case 6 when bytes.Length >= 4:
            {
                var at = random.Next(bytes.Length - 3);
                uint value = random.Next(3) switch { 0 => 0x7FFF_FFFF, 1 => 0xFFFF_FFFF, _ => (uint)random.Next() };
                BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(at), value);
                return bytes;
            }
            case 7:
            {
                // Splice: the head of this input, the tail of another seed.
                var other = seeds[random.Next(seeds.Length)];
                var cut = random.Next(bytes.Length + 1);
                var from = random.Next(other.Length + 1);
                return [.. bytes.AsSpan(0, cut), .. other.AsSpan(from)];
            }
            case 8 when bytes.Length > 0:
            {
                // Duplicate a chunk in place (repeated fields, repeated attributes).
                var at = random.Next(bytes.Length);
                var count = Math.Min(bytes.Length - at, 1 + random.Next(32));
                return [.. bytes.AsSpan(0, at + count), .. bytes.AsSpan(at, count), .. bytes.AsSpan(at + count)];
            }
            case 9 when bytes.Length > 0:
            {
                var at = random.Next(bytes.Length);
                var count = Math.Min(bytes.Length - at, 1 + random.Next(16));
                random.NextBytes(bytes.AsSpan(at, count));
                return bytes;
            }
            case 10:
                // Concatenate two seeds (two frames or requests back to back).
                return [.. bytes, .. seeds[random.Next(seeds.Length)]];
            default:
                if (bytes.Length > 0)
                {
                    bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
                }
                return bytes;
        }
    }

    private static readonly byte[] Interesting = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x0A, 0x0D, 0x20, 0x22, 0x2C, 0x2E, 0x3A, 0x3F, 0x40, 0x5B, 0x5D, 0x7B, 0x7D, 0x7E, 0x7F, 0x80, 0xC0, 0xFE, 0xFF];
}

internal readonly record struct FuzzResult(int Iterations, int Accepted, long MaxAllocated, TimeSpan Elapsed)
{
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Iterations} inputs, {Accepted} accepted, at most {MaxAllocated} bytes allocated per input, {Elapsed.TotalMilliseconds:0} ms");
}

/// <summary>A property violation, with everything needed to replay it.</summary>
internal sealed class FuzzFailure : Exception
{
    public FuzzFailure()
    {
    }

    public FuzzFailure(string message)
        : base(message)
    {
    }

    public FuzzFailure(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

/// <summary>Mutations that keep JSON well formed, so inputs get past the tokenizer and reach the binder and the consumers.</summary>
internal static class JsonMutator
{
    public static byte[] Next(Random random, byte[][] seeds)
    {
        if (random.Next(3) == 0)
        {
            return Fuzzer.Next(random, seeds);
        }
        var input = seeds[random.Next(seeds.Length)];
        string text;
        try
        {
            var root = System.Text.Json.Nodes.JsonNode.Parse(input);
            if (root is null)
            {
                return input;
            }
            for (var edits = 1 + random.Next(3); edits > 0; edits--)
            {
                root = MutateNode(random, root);
            }
            // Nesting deeper than any writer allows is spliced in as text.
            text = root.ToJsonString().Replace($"\"{DeepMarker}\"", new string('[', 200) + new string(']', 200), StringComparison.Ordinal);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or ArgumentException)
        {
            // Not JSON the node model takes (it reads lazily, so invalid UTF-8 or a repeated name only shows up while walking): mutate the bytes instead.
            return Fuzzer.Mutate(random, input, seeds);
        }
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        return random.Next(4) == 0 ? Fuzzer.Mutate(random, bytes, seeds) : bytes;
    }

    private static System.Text.Json.Nodes.JsonNode MutateNode(Random random, System.Text.Json.Nodes.JsonNode root)
    {
        var nodes = new List<System.Text.Json.Nodes.JsonNode>();
        Collect(root, nodes);
        var target = nodes[random.Next(nodes.Count)];
        var replacement = Value(random);
        switch (target.Parent)
        {
            case System.Text.Json.Nodes.JsonObject parent:
            {
                var name = target.GetPropertyName();
                switch (random.Next(4))
                {
                    case 0:
                        parent.Remove(name);
                        break;
                    case 1 when name != "type":
                        // An unknown member beside the real one, or the same member in another case.
                        parent[random.Next(2) == 0 ? name.ToUpperInvariant() : name + "x"] = replacement;
                        break;
                    default:
                        parent[name] = replacement;
                        break;
                }
                return root;
            }
            case System.Text.Json.Nodes.JsonArray array:
            {
                var index = array.IndexOf(target);
                if (random.Next(3) == 0)
                {
                    array.Insert(index, replacement);
                }
                else
                {
                    array[index] = replacement;
                }
                return root;
            }
            default:
                return random.Next(4) == 0 ? replacement ?? root : root;
        }
    }

    private static void Collect(System.Text.Json.Nodes.JsonNode node, List<System.Text.Json.Nodes.JsonNode> nodes)
    {
        nodes.Add(node);
        switch (node)
        {
            case System.Text.Json.Nodes.JsonObject o:
                foreach (var (_, child) in o)
                {
                    if (child is not null)
                    {
                        Collect(child, nodes);
                    }
                }
                break;
            case System.Text.Json.Nodes.JsonArray a:
                foreach (var child in a)
                {
                    if (child is not null)
                    {
                        Collect(child, nodes);
                    }
                }
                break;
        }
    }

    private const string DeepMarker = "deep-nesting-goes-here";

    private static readonly string[] Types =
    [
        "probe", "hello", "probe-reply", "welcome", "refused", "certificate-request", "certificate", "rotate-tokens", "tokens-rotated",
        "tokens-saved", "resources", "error", "relay-status", "relays", "stun-report", "ticket-request", "ticket", "access", "candidates",
        "path-report", "connector-status", "unknown-type", "",
    ];

    /// <summary>A hostile JSON value: wrong types, extremes, deep nesting, long or odd strings.</summary>
    private static System.Text.Json.Nodes.JsonNode? Value(Random random) => random.Next(16) switch
    {
        0 => null,
        1 => System.Text.Json.Nodes.JsonValue.Create(long.MaxValue),
        2 => System.Text.Json.Nodes.JsonValue.Create(-1),
        3 => System.Text.Json.Nodes.JsonNode.Parse("1e400"),
        4 => System.Text.Json.Nodes.JsonValue.Create(0.5),
        5 => System.Text.Json.Nodes.JsonValue.Create(random.Next(2) == 0),
        6 => System.Text.Json.Nodes.JsonValue.Create(""),
        7 => System.Text.Json.Nodes.JsonValue.Create(new string('a', random.Next(2) == 0 ? 300 : 70_000)),
        8 => System.Text.Json.Nodes.JsonValue.Create("\u0000\u001b[31m\r\nx\ud800"),
        9 => new System.Text.Json.Nodes.JsonArray(),
        10 => new System.Text.Json.Nodes.JsonArray(null, System.Text.Json.Nodes.JsonValue.Create(1), System.Text.Json.Nodes.JsonValue.Create("x")),
        11 => new System.Text.Json.Nodes.JsonObject(),
        12 => System.Text.Json.Nodes.JsonValue.Create(DeepMarker),
        13 => System.Text.Json.Nodes.JsonValue.Create(Types[random.Next(Types.Length)]),
        14 => System.Text.Json.Nodes.JsonValue.Create("2026-13-45T99:00:00Z"),
        _ => System.Text.Json.Nodes.JsonValue.Create(random.Next()),
    };
}
