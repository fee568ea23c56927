<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1" language="zh_CN">
<context>
    <name></name>
    <message>
        <location filename="../../gui/app.py" line="41"/>
        <source>Something went wrong</source>
        <translation>出错了</translation>
    </message>
    <message>
        <location filename="../../gui/app.py" line="42"/>
        <source>QuantDesk hit an unexpected error: {kind}: {error}

It was written to the log in {folder}.</source>
        <translation>QuantDesk 遇到意外错误：{kind}: {error}

详情已写入 {folder} 中的日志。</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="59"/>
        <source>Could not start the engine worker ({program}): {error}</source>
        <translation>无法启动引擎进程（{program}）：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="67"/>
        <location filename="../../gui/pages/results.py" line="53"/>
        <source>Finished</source>
        <translation>已完成</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="71"/>
        <source>Cancelled. The worker did not stop in time and was ended; no output was kept.</source>
        <translation>已取消。后台进程未能及时停止，已被结束；没有保留任何输出。</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="74"/>
        <source>it was killed or crashed (for example, out of memory)</source>
        <translation>进程被终止或崩溃（例如内存不足）</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="75"/>
        <source>exit code {code}</source>
        <translation>退出码 {code}</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="76"/>
        <source>The engine worker stopped unexpectedly ({how}). Nothing was written to the output folder. You can start the job again.</source>
        <translation>引擎进程意外停止（{how}）。输出文件夹中没有写入任何内容。你可以重新开始这个任务。</translation>
    </message>
    <message>
        <location filename="../../gui/engine_process.py" line="65"/>
        <source>The worker&apos;s result could not be read: {error}</source>
        <translation>无法读取引擎进程的结果：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="40"/>
        <location filename="../../gui/welcome.py" line="13"/>
        <source>Hardware</source>
        <translation>硬件</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="40"/>
        <location filename="../../gui/pages/chat.py" line="172"/>
        <location filename="../../gui/pages/hardware.py" line="115"/>
        <location filename="../../gui/pages/model.py" line="110"/>
        <location filename="../../gui/pages/results.py" line="49"/>
        <location filename="../../gui/welcome.py" line="16"/>
        <location filename="../../gui/widgets/hub_browser.py" line="46"/>
        <source>Model</source>
        <translation>模型</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="40"/>
        <location filename="../../gui/pages/method.py" line="131"/>
        <location filename="../../gui/pages/results.py" line="49"/>
        <location filename="../../gui/welcome.py" line="18"/>
        <source>Method</source>
        <translation>方法</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="41"/>
        <location filename="../../gui/welcome.py" line="21"/>
        <source>Run</source>
        <translation>运行</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="41"/>
        <location filename="../../gui/pages/results.py" line="66"/>
        <source>Results</source>
        <translation>结果</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="41"/>
        <location filename="../../gui/pages/chat.py" line="205"/>
        <source>Chat</source>
        <translation>对话</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="73"/>
        <source>Quantize LLMs locally</source>
        <translation>在本机量化大语言模型</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="129"/>
        <source>&amp;File</source>
        <translation>文件(&amp;F)</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="130"/>
        <source>Open data folder</source>
        <translation>打开数据文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="133"/>
        <source>&amp;Quit</source>
        <translation>退出(&amp;Q)</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="139"/>
        <source>&amp;Help</source>
        <translation>帮助(&amp;H)</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="140"/>
        <source>Welcome and steps</source>
        <translation>欢迎与步骤</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="142"/>
        <location filename="../../gui/main_window.py" line="212"/>
        <source>About QuantDesk</source>
        <translation>关于 QuantDesk</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="145"/>
        <location filename="../../gui/main_window.py" line="158"/>
        <source>Language</source>
        <translation>语言</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="159"/>
        <source>The language changes the next time QuantDesk starts.</source>
        <translation>语言将在 QuantDesk 下次启动时切换。</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="203"/>
        <source>CPU only · {ram} RAM</source>
        <translation>仅 CPU · {ram} 内存</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="205"/>
        <source>Model: {name}</source>
        <translation>模型：{name}</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="207"/>
        <source>● A job is running</source>
        <translation>● 有任务正在运行</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="213"/>
        <source>&lt;h3&gt;QuantDesk {version}&lt;/h3&gt;&lt;p&gt;Quantize large language models on your own machine: GPTQ, AWQ, GGUF.&lt;/p&gt;&lt;p&gt;Python {py} · Qt {qt}{torch}&lt;br&gt;{os}&lt;/p&gt;&lt;p&gt;Data: {data}&lt;/p&gt;</source>
        <translation>&lt;h3&gt;QuantDesk {version}&lt;/h3&gt;&lt;p&gt;在你自己的电脑上量化大语言模型：GPTQ、AWQ、GGUF。&lt;/p&gt;&lt;p&gt;Python {py} · Qt {qt}{torch}&lt;br&gt;{os}&lt;/p&gt;&lt;p&gt;数据：{data}&lt;/p&gt;</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="233"/>
        <source>A job is running</source>
        <translation>有任务正在运行</translation>
    </message>
    <message>
        <location filename="../../gui/main_window.py" line="234"/>
        <source>Quantizing is still running. Stop it and quit? Nothing partial is kept.</source>
        <translation>量化仍在进行。要停止并退出吗？不会保留任何不完整的输出。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="52"/>
        <source>Not loaded</source>
        <translation>未加载</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="78"/>
        <source>Loading…</source>
        <translation>正在加载…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="84"/>
        <source>{kind} · template: {template}</source>
        <translation>{kind} · 模板：{template}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="86"/>
        <location filename="../../gui/pages/chat.py" line="143"/>
        <source>Ready</source>
        <translation>就绪</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="91"/>
        <source>Could not load: {error}</source>
        <translation>无法加载：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="111"/>
        <source>Generating…</source>
        <translation>正在生成…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="143"/>
        <location filename="../../gui/pages/run.py" line="282"/>
        <source>Stopped</source>
        <translation>已停止</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="151"/>
        <source>Generation failed: {error}</source>
        <translation>生成失败：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="172"/>
        <source>You</source>
        <translation>你</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="206"/>
        <source>Ask the quantized model and the original the same question and compare.</source>
        <translation>向量化后的模型和原始模型提出同一个问题，比较它们的回答。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="209"/>
        <source>Quantized model</source>
        <translation>量化模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="215"/>
        <source>Finish a run, or open a .gguf file or a model folder</source>
        <translation>先完成一次运行，或打开 .gguf 文件或模型文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="218"/>
        <source>Open file or folder…</source>
        <translation>打开文件或文件夹…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="220"/>
        <source>A GGUF file…</source>
        <translation>GGUF 文件…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="221"/>
        <source>A model folder…</source>
        <translation>模型文件夹…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="226"/>
        <source>Compare with the original</source>
        <translation>与原始模型比较</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="230"/>
        <source>Load</source>
        <translation>加载</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="236"/>
        <source>Original</source>
        <translation>原始模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="237"/>
        <source>Quantized</source>
        <translation>量化模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="243"/>
        <source>Type a message; Enter sends, Shift+Enter adds a line</source>
        <translation>输入消息；Enter 发送，Shift+Enter 换行</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="252"/>
        <source>max </source>
        <translation>最多 </translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="253"/>
        <location filename="../../gui/pages/hardware.py" line="95"/>
        <source> tokens</source>
        <translation> 个词元</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="258"/>
        <source>temperature </source>
        <translation>温度 </translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="259"/>
        <source>0 = greedy: the same answer every time, best for comparing the two models</source>
        <translation>0 = 贪心解码：每次回答相同，最适合比较两个模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="261"/>
        <source>Send</source>
        <translation>发送</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="263"/>
        <source>Stop</source>
        <translation>停止</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="265"/>
        <source>New chat</source>
        <translation>新对话</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="306"/>
        <source>Open a GGUF file</source>
        <translation>打开 GGUF 文件</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="307"/>
        <source>GGUF (*.gguf);;All files (*)</source>
        <translation>GGUF (*.gguf);;所有文件 (*)</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="36"/>
        <source>this machine (automatic)</source>
        <translation>本机（自动）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="37"/>
        <source>this machine&apos;s GPU</source>
        <translation>本机的 GPU</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="37"/>
        <source>the CPU</source>
        <translation>CPU</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="38"/>
        <source>an edge device</source>
        <translation>边缘设备</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="40"/>
        <source>on the GPU</source>
        <translation>在 GPU 上</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="40"/>
        <source>in RAM</source>
        <translation>在内存中</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="49"/>
        <source>Your hardware</source>
        <translation>你的硬件</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="50"/>
        <source>What this machine can run and quantize, and the method that suits it best.</source>
        <translation>这台电脑能运行和量化什么，以及最适合它的方法。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="51"/>
        <source>Scan again</source>
        <translation>重新检测</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="58"/>
        <source>Processor</source>
        <translation>处理器</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="59"/>
        <source>Memory</source>
        <translation>内存</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="60"/>
        <source>Graphics</source>
        <translation>显卡</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="66"/>
        <source>Optimise for</source>
        <translation>优化目标</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="71"/>
        <source>Speed</source>
        <translation>速度</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="71"/>
        <source>Accuracy</source>
        <translation>精度</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="81"/>
        <source>The model will run on</source>
        <translation>模型将运行在</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="90"/>
        <source>Context</source>
        <translation>上下文</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="105"/>
        <location filename="../../gui/pages/hardware.py" line="145"/>
        <source>Looking at this machine…</source>
        <translation>正在检测这台电脑…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="115"/>
        <location filename="../../gui/pages/model.py" line="39"/>
        <location filename="../../gui/widgets/hub_browser.py" line="46"/>
        <source>Parameters</source>
        <translation>参数量</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="115"/>
        <source>Runs here</source>
        <translation>可在本机运行</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="116"/>
        <source>Quantizing needs</source>
        <translation>量化所需</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="153"/>
        <source>Could not read the hardware: {error}</source>
        <translation>无法读取硬件信息：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="165"/>
        <source>{cores} cores, {threads} threads · {os}</source>
        <translation>{cores} 核，{threads} 线程 · {os}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="167"/>
        <source>{total} RAM</source>
        <translation>{total} 内存</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="168"/>
        <source>{free} available now</source>
        <translation>当前可用 {free}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="174"/>
        <source>{total} {kind} memory, {free} free</source>
        <translation>{total} {kind}内存，空闲 {free}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="176"/>
        <source>shared</source>
        <translation>共享</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="178"/>
        <source> (this torch build cannot use it)</source>
        <translation>（当前 torch 版本无法使用）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="182"/>
        <source>No GPU</source>
        <translation>没有 GPU</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="183"/>
        <source>That is fine: quantizing runs on the CPU, and GGUF models run well on a CPU.</source>
        <translation>没关系：量化可以在 CPU 上进行，GGUF 模型在 CPU 上也运行良好。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="188"/>
        <source>Recommended: {summary}</source>
        <translation>推荐：{summary}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="197"/>
        <source>Weights at each precision (GiB = 2³⁰ bytes; INT8/INT4 include group scales, embeddings stay 16-bit). “Runs here” adds a {ctx}-token KV cache and runtime overhead: green fits in GPU memory, blue in RAM. “Quantizing needs” is the planner&apos;s peak memory for quantizing with {method}, one block at a time: GPU memory where it fits there, else RAM.</source>
        <translation>各精度下的权重大小（GiB = 2³⁰ 字节；INT8/INT4 含分组缩放因子，嵌入层保持 16 位）。“可在本机运行”另加 {ctx} 个词元的 KV 缓存和运行开销：绿色表示可放入显存，蓝色表示可放入内存。“量化所需”是规划器估算的使用 {method} 逐块量化时的峰值内存：能放入显存时为显存，否则为内存。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="212"/>
        <source>{name} (selected)</source>
        <translation>{name}（已选）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="226"/>
        <source>{p}: weights {w}; with a {ctx}-token context about {run} to run</source>
        <translation>{p}：权重 {w}；使用 {ctx} 个词元的上下文运行约需 {run}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/hardware.py" line="231"/>
        <location filename="../../gui/pages/hardware.py" line="243"/>
        <source>does not fit</source>
        <translation>放不下</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="61"/>
        <source>Round to nearest. The fast baseline: no calibration data; every other method should beat it.</source>
        <translation>就近取整。最快的基线方法：不需要校准数据；其他方法都应该比它好。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="63"/>
        <source>Corrects rounding errors column by column with second-order information. The accuracy choice for GPU inference.</source>
        <translation>利用二阶信息逐列修正取整误差。GPU 推理时注重精度的选择。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="65"/>
        <source>Scales up the weights that matter most for real activations before rounding. The speed choice for GPU inference.</source>
        <translation>在取整前放大对真实激活最重要的权重。GPU 推理时注重速度的选择。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="67"/>
        <source>llama.cpp&apos;s file format: runs on CPUs and Apple GPUs, and opens in LM Studio and Ollama.</source>
        <translation>llama.cpp 的文件格式：可在 CPU 和 Apple GPU 上运行，可用 LM Studio 和 Ollama 打开。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="72"/>
        <source>per channel</source>
        <translation>按通道</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="30"/>
        <source>Off</source>
        <translation>关闭</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="30"/>
        <source>Attention 8-bit, FFN 4-bit (preset)</source>
        <translation>注意力 8 位，FFN 4 位（预设）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="31"/>
        <source>Custom rules</source>
        <translation>自定义规则</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="32"/>
        <source>Module pattern</source>
        <translation>模块匹配模式</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="168"/>
        <location filename="../../gui/widgets/rules_table.py" line="32"/>
        <source>Bits</source>
        <translation>位数</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="32"/>
        <source>Group</source>
        <translation>分组</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="33"/>
        <source>Symmetric</source>
        <translation>对称</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="172"/>
        <location filename="../../gui/widgets/rules_table.py" line="33"/>
        <source>GGUF type</source>
        <translation>GGUF 类型</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="33"/>
        <source>Keep 16-bit</source>
        <translation>保持 16 位</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="87"/>
        <source>Mixed-precision rule {n}</source>
        <translation>混合精度规则 {n}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="122"/>
        <source>Method and settings</source>
        <translation>方法与设置</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="123"/>
        <source>The defaults follow the recommendation for this machine; change what you need.</source>
        <translation>默认值遵循针对本机的推荐；按需修改。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="125"/>
        <source>Use recommended settings</source>
        <translation>使用推荐设置</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="185"/>
        <location filename="../../gui/pages/results.py" line="49"/>
        <source>Settings</source>
        <translation>设置</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="194"/>
        <source>{b}-bit</source>
        <translation>{b} 位</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="200"/>
        <source>Symmetric (no zero point)</source>
        <translation>对称（无零点）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="201"/>
        <source>Asymmetric (with zero point)</source>
        <translation>非对称（有零点）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="205"/>
        <source>Importance matrix from calibration data</source>
        <translation>用校准数据计算重要性矩阵</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="206"/>
        <source>Activation order (desc_act)</source>
        <translation>按激活排序（desc_act）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="207"/>
        <source>Search weight clipping</source>
        <translation>搜索权重裁剪</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="212"/>
        <source>Built-in text (offline)</source>
        <translation>内置文本（离线）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="213"/>
        <source>A text file…</source>
        <translation>文本文件…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="215"/>
        <source>path of a .txt or .jsonl file</source>
        <translation>.txt 或 .jsonl 文件的路径</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="216"/>
        <location filename="../../gui/pages/method.py" line="244"/>
        <location filename="../../gui/pages/model.py" line="67"/>
        <source>Browse…</source>
        <translation>浏览…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="73"/>
        <source>Automatic</source>
        <translation>自动</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="74"/>
        <source>NVIDIA GPU (CUDA)</source>
        <translation>NVIDIA GPU（CUDA）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="531"/>
        <source>The job does not fit</source>
        <translation>本机资源不足以运行此任务</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="532"/>
        <source>The plan says this job does not fit on this machine:

{problems}

Fixes that fit: {fixes}

Start anyway? It may run out of memory or disk part of the way through.</source>
        <translation>根据规划，本机资源不足以运行此任务：

{problems}

可行的调整：{fixes}

仍然开始吗？运行到中途可能会内存或磁盘空间不足。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="536"/>
        <location filename="../../gui/widgets/plan_card.py" line="122"/>
        <source>none found</source>
        <translation>未找到</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="37"/>
        <source>Memory and time plan</source>
        <translation>内存与时间规划</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="42"/>
        <source>Choose a model to see what the job needs.</source>
        <translation>选择模型后即可查看任务所需的资源。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="49"/>
        <source>Time one block</source>
        <translation>测试一个块的用时</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="51"/>
        <source>Runs the job&apos;s first block on this machine (in a separate process) and extrapolates: a better time estimate than the formula, in seconds to minutes.</source>
        <translation>在本机（在单独的进程中）运行任务的第一个块并据此推算：比公式更准确的用时估计，需要几秒到几分钟。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="79"/>
        <source>Planning memory, disk and time…</source>
        <translation>正在估算内存、磁盘和时间…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="89"/>
        <source>Timing one block of the job on this machine…</source>
        <translation>正在本机测试任务中一个块的用时…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="105"/>
        <source>Could not plan this job: {error}</source>
        <translation>无法规划此任务：{error}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="129"/>
        <source>Peak memory: {ram} of {total} RAM</source>
        <translation>内存峰值：{ram}（共 {total} 内存）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="132"/>
        <source>Peak GPU memory: {vram} of {total}</source>
        <translation>显存峰值：{vram}（共 {total}）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="136"/>
        <source>GPU mode: lean (calibration activations in host memory, streamed to the GPU: fast mode needs more GPU memory than allowed)</source>
        <translation>显存模式：精简（校准激活值保存在主机内存中，按小批传输到 GPU：快速模式所需显存超出允许范围）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="137"/>
        <source>GPU mode: lean ({kept} calibration samples kept on the GPU, {streamed} in host memory and streamed to it: fast mode needs more GPU memory than allowed)</source>
        <translation>显存模式：精简（{kept} 个校准样本保留在 GPU 上，{streamed} 个保存在主机内存中并按小批传输到 GPU：快速模式所需显存超出允许范围）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="139"/>
        <source>GPU mode: fast (calibration activations on the GPU)</source>
        <translation>显存模式：快速（校准激活值保存在 GPU 上）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="141"/>
        <source>GPU mode: fast, the attention recomputed in each pass (keeping its output between passes needs more GPU memory than allowed)</source>
        <translation>显存模式：快速，注意力在每一轮中重新计算（在各轮之间保留其输出所需的显存超出允许范围）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="140"/>
        <source>Disk: {temp} while running, {final} at the end ({free} free)</source>
        <translation>磁盘：运行时 {temp}，完成后 {final}（空闲 {free}）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="145"/>
        <source>Time: about {time} on {device} (one block timed on this machine: {block} per block)</source>
        <translation>用时：在 {device} 上约 {time}（已在本机实测一个块：每块 {block}）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="150"/>
        <source>Time: about {time} on {device} (estimated from this machine&apos;s speed; “Time one block” measures it)</source>
        <translation>用时：在 {device} 上约 {time}（按本机速度估算；“测试一个块的用时”可实测）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="115"/>
        <source>Fits on this machine.</source>
        <translation>本机资源足够。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="119"/>
        <source>Does not fit: {problems}</source>
        <translation>资源不足：{problems}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/plan_card.py" line="121"/>
        <source>What would fit: {fixes}</source>
        <translation>可行的调整：{fixes}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="485"/>
        <source>Start anyway…</source>
        <translation>仍然开始…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="169"/>
        <source>Group size</source>
        <translation>分组大小</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="400"/>
        <source>{g} does not divide the input width of every layer of this model ({widths})</source>
        <translation>{g} 不能整除此模型每一层的输入宽度（{widths}）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="408"/>
        <source>Only group sizes that divide the input width of every layer ({widths}) are offered.</source>
        <translation>只提供能整除每一层输入宽度（{widths}）的分组大小。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="171"/>
        <source>Zero point</source>
        <translation>零点</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="175"/>
        <location filename="../../gui/pages/results.py" line="53"/>
        <source>Calibration</source>
        <translation>校准数据</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="177"/>
        <source>Samples</source>
        <translation>样本数</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="178"/>
        <source>Tokens per sample</source>
        <translation>每个样本的词元数</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="179"/>
        <source>Device</source>
        <translation>设备</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="232"/>
        <source>Mixed precision</source>
        <translation>混合精度</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="63"/>
        <source>Per-module rules</source>
        <translation>逐模块规则</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="69"/>
        <source>Add rule</source>
        <translation>添加规则</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="70"/>
        <source>Remove rule</source>
        <translation>删除规则</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/rules_table.py" line="55"/>
        <source>A rule gives every module whose full name matches the pattern (a glob such as *.self_attn.* or *.mlp.down_proj) its own precision; later rules win. Modules no rule matches use the settings above; lm_head stays 16-bit.</source>
        <translation>规则为全名匹配该模式（如 *.self_attn.* 或 *.mlp.down_proj 这样的通配符）的每个模块指定精度；后面的规则优先。没有规则匹配的模块使用上面的设置；lm_head 保持 16 位。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="240"/>
        <source>Output</source>
        <translation>输出</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="249"/>
        <source>A new folder; it must not exist yet. GGUF jobs put the .gguf file, an Ollama Modelfile and the model card in it.</source>
        <translation>一个新文件夹，必须尚不存在。GGUF 任务会在其中放入 .gguf 文件、Ollama Modelfile 和模型卡片。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="258"/>
        <location filename="../../gui/pages/method.py" line="484"/>
        <source>Start quantizing</source>
        <translation>开始量化</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="311"/>
        <source>Choose a model on the Model page first.</source>
        <translation>请先在“模型”页面选择一个模型。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="340"/>
        <source>Choose a calibration text file, or use the built-in text.</source>
        <translation>请选择校准文本文件，或使用内置文本。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="343"/>
        <source>The calibration file {path} does not exist.</source>
        <translation>校准文件 {path} 不存在。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="328"/>
        <source>The output folder {path} already exists; choose a new name.</source>
        <translation>输出文件夹 {path} 已存在；请换一个名字。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="331"/>
        <source>A job is running; wait for it to finish or cancel it.</source>
        <translation>有任务正在运行；请等待完成或取消它。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="358"/>
        <source>✓ Ready: {title} → {out}</source>
        <translation>✓ 就绪：{title} → {out}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="63"/>
        <source>Fit a size budget</source>
        <translation>按大小预算分配精度</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="53"/>
        <source>Give the size of the file you want: each module then gets the precision that hurts the model least, measured on the calibration data.</source>
        <translation>填写你想要的文件大小：每个模块将分到对模型损害最小的精度（在校准数据上测量）。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="56"/>
        <source>Edit the last plan as rules</source>
        <translation>将上次的精度方案改为规则编辑</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="109"/>
        <source>Reading the model&apos;s tensor sizes…</source>
        <translation>正在读取模型各张量的大小…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="165"/>
        <source>Possible: {low} (every module at its lowest precision) to {high} (all 16-bit).</source>
        <translation>可选范围：{low}（每个模块都用最低精度）到 {high}（全部 16 位）。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="170"/>
        <source>Predicted quality: the job measures each module&apos;s sensitivity first (one calibration pass, kept for later runs) and logs the plan; after that it is predicted here as you move the slider.</source>
        <translation>质量预测：任务会先测量每个模块的敏感度（一次校准遍历，结果保留供以后的运行使用）并在日志中记录精度方案；之后拖动滑块时，这里会直接给出预测。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_budget.py" line="183"/>
        <source>Predicted: {ratio:.2f}× the output error of every module at 4 bits (KL divergence ≈ {kld:.3g}); {size}: {counts}.</source>
        <translation>预测：输出误差为所有模块均用 4 位时的 {ratio:.2f} 倍（KL 散度 ≈ {kld:.3g}）；{size}：{counts}。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="417"/>
        <source>recommended</source>
        <translation>推荐</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="511"/>
        <source>Folder to put the output in</source>
        <translation>存放输出的文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="519"/>
        <source>Calibration text</source>
        <translation>校准文本</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="520"/>
        <source>Text (*.txt *.jsonl);;All files (*)</source>
        <translation>文本 (*.txt *.jsonl);;所有文件 (*)</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="39"/>
        <source>Name</source>
        <translation>名称</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="39"/>
        <source>Architecture</source>
        <translation>架构</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="40"/>
        <source>Blocks</source>
        <translation>块数</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="40"/>
        <source>Hidden size</source>
        <translation>隐藏层大小</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="40"/>
        <source>Weights</source>
        <translation>权重</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="41"/>
        <source>Size on disk</source>
        <translation>磁盘占用</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="41"/>
        <source>Location</source>
        <translation>位置</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="41"/>
        <source>Methods</source>
        <translation>可用方法</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="262"/>
        <source>not {method}: {reason}</source>
        <translation>不可用 {method}：{reason}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="395"/>
        <source>Not for this model: {reason}</source>
        <translation>此模型不可用：{reason}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="51"/>
        <source>Choose a model</source>
        <translation>选择模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="52"/>
        <source>Start with the small built-in model to learn the steps, or pick your own.</source>
        <translation>可以先用内置的小模型熟悉步骤，也可以选择你自己的模型。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="54"/>
        <source>Source</source>
        <translation>来源</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="58"/>
        <source>Built-in demo: SmolLM2-135M-Instruct</source>
        <translation>内置演示模型：SmolLM2-135M-Instruct</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="59"/>
        <source>135 M parameters, works offline; small enough to try every method on a laptop CPU.</source>
        <translation>1.35 亿参数，可离线使用；足够小，可以在笔记本 CPU 上尝试每种方法。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="61"/>
        <source>A folder on this computer</source>
        <translation>本机上的文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="62"/>
        <source>A Hugging Face model folder: config.json, *.safetensors and the tokenizer files.</source>
        <translation>Hugging Face 模型文件夹：包含 config.json、*.safetensors 和分词器文件。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="65"/>
        <source>/path/to/model-folder</source>
        <translation>/模型/文件夹/路径</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="78"/>
        <source>A Hugging Face model id</source>
        <translation>Hugging Face 模型 ID</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="79"/>
        <source>Uses the local Hugging Face cache; downloads only when you allow it and are online.</source>
        <translation>使用本地 Hugging Face 缓存；仅在你允许且联网时才下载。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="83"/>
        <source>Download if it is not in the cache</source>
        <translation>缓存中没有时下载</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="90"/>
        <source>Use this model</source>
        <translation>使用此模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="116"/>
        <source>Next: choose a method →</source>
        <translation>下一步：选择方法 →</translation>
    </message>
    <message>
        <location filename="../../gui/pages/chat.py" line="311"/>
        <location filename="../../gui/pages/model.py" line="167"/>
        <source>Choose a model folder</source>
        <translation>选择模型文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="181"/>
        <source>⚠ This folder does not exist.</source>
        <translation>⚠ 此文件夹不存在。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="183"/>
        <source>⚠ No config.json here: choose the folder that holds the model files.</source>
        <translation>⚠ 这里没有 config.json：请选择包含模型文件的文件夹。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="186"/>
        <source>⚠ No *.safetensors weights in this folder.</source>
        <translation>⚠ 此文件夹中没有 *.safetensors 权重。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="188"/>
        <source>✓ Looks like a model folder.</source>
        <translation>✓ 看起来是一个模型文件夹。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="195"/>
        <source>Enter a folder or a model id first.</source>
        <translation>请先输入文件夹或模型 ID。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="206"/>
        <source>Reading {source}… (the demo model is prepared once, which takes a few seconds)</source>
        <translation>正在读取 {source}…（演示模型只需准备一次，需要几秒钟）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="222"/>
        <source>Downloading: {done} of {total}</source>
        <translation>正在下载：{done} / {total}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="229"/>
        <source>✓ Ready: {name}</source>
        <translation>✓ 就绪：{name}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="241"/>
        <source>Could not read the model: {kind}: {error}</source>
        <translation>无法读取模型：{kind}: {error}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="50"/>
        <source>Size</source>
        <translation>大小</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="50"/>
        <source>Perplexity</source>
        <translation>困惑度</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="50"/>
        <source>vs original</source>
        <translation>相比原始模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="51"/>
        <source>Verdict</source>
        <translation>结论</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="51"/>
        <source>Time</source>
        <translation>用时</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="52"/>
        <source>Folder</source>
        <translation>文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="52"/>
        <source>Format</source>
        <translation>格式</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="52"/>
        <source>Files</source>
        <translation>文件</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="53"/>
        <source>Compared with</source>
        <translation>比较对象</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="54"/>
        <source>Quality</source>
        <translation>质量</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="80"/>
        <source>No results yet. Finished runs appear here and stay across restarts.</source>
        <translation>还没有结果。完成的运行会显示在这里，重启后仍会保留。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="84"/>
        <source>Selected run</source>
        <translation>所选运行</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="88"/>
        <source>Open folder</source>
        <translation>打开文件夹</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="90"/>
        <source>Chat with it</source>
        <translation>与它对话</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="92"/>
        <source>Remove from list</source>
        <translation>从列表中移除</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="124"/>
        <source>Size vs quality of this model&apos;s runs</source>
        <translation>此模型各次运行的大小与质量</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="171"/>
        <source>original</source>
        <translation>原始</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="211"/>
        <source>{n} samples × {L} tokens</source>
        <translation>{n} 个样本 × {L} 个词元</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="72"/>
        <source>KL divergence {kld:.4f} (99th percentile {p99:.3f}), top-1 agreement {top1:.1f} %</source>
        <translation>KL 散度 {kld:.4f}（第 99 百分位 {p99:.3f}），top-1 一致率 {top1:.1f} %</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="31"/>
        <source>Preparing calibration data</source>
        <translation>正在准备校准数据</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="32"/>
        <source>Quantizing</source>
        <translation>正在量化</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="32"/>
        <source>Writing the output</source>
        <translation>正在写入输出</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="33"/>
        <source>Measuring perplexity</source>
        <translation>正在测量困惑度</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="35"/>
        <source>{s} s</source>
        <translation>{s} 秒</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="35"/>
        <source>{m} min {s:02d} s</source>
        <translation>{m} 分 {s:02d} 秒</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="36"/>
        <source>{h} h {m:02d} min</source>
        <translation>{h} 小时 {m:02d} 分</translation>
    </message>
    <message>
        <location filename="../../gui/format.py" line="81"/>
        <source> + mixed precision</source>
        <translation> + 混合精度</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="63"/>
        <source>No job yet</source>
        <translation>还没有任务</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="70"/>
        <location filename="../../gui/widgets/hub_browser.py" line="221"/>
        <location filename="../../gui/widgets/publish_dialog.py" line="109"/>
        <source>Cancel</source>
        <translation>取消</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="72"/>
        <source>See results →</source>
        <translation>查看结果 →</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="74"/>
        <source>Back to settings</source>
        <translation>返回设置</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="79"/>
        <source>Choose a model and a method, then press Start quantizing.</source>
        <translation>选择模型和方法，然后点击“开始量化”。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="88"/>
        <source>Waiting</source>
        <translation>等待中</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="108"/>
        <source>Show details</source>
        <translation>显示详情</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="124"/>
        <source>Relative output error per layer</source>
        <translation>每层的相对输出误差</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="126"/>
        <source>Log</source>
        <translation>日志</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="175"/>
        <source>{model} → {out}</source>
        <translation>{model} → {out}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="176"/>
        <source>running</source>
        <translation>运行中</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="177"/>
        <source>Starting the worker…</source>
        <translation>正在启动后台进程…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="194"/>
        <source>Cancelling… (the worker stops after the current module)</source>
        <translation>正在取消…（后台进程会在当前模块完成后停止）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="203"/>
        <source>Loading {model}</source>
        <translation>正在加载 {model}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="226"/>
        <source>{module} · {bits}-bit · relative error {err:.2e} · {secs:.2f} s</source>
        <translation>{module} · {bits} 位 · 相对误差 {err:.2e} · {secs:.2f} 秒</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="237"/>
        <source>Experts: {ok} linears calibrated on their own tokens · {few} fallback (too few tokens: rounded to nearest)</source>
        <translation>专家：{ok} 个线性层用各自路由到的词元校准 · {few} 个回退（词元太少：就近取整）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="240"/>
        <source>Fallback (too few calibration tokens routed to them):</source>
        <translation>回退（路由到它们的校准词元太少）：</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="251"/>
        <source>wrote {path} ({size})</source>
        <translation>已写入 {path}（{size}）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="262"/>
        <source>done in {t}</source>
        <translation>用时 {t} 完成</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="268"/>
        <source>Finished: {size}{ppl}</source>
        <translation>已完成：{size}{ppl}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="270"/>
        <source>, perplexity {p:.2f}</source>
        <translation>，困惑度 {p:.2f}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="274"/>
        <source>cancelled</source>
        <translation>已取消</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="274"/>
        <source>failed</source>
        <translation>失败</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="275"/>
        <source>worker crashed</source>
        <translation>后台进程崩溃</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="288"/>
        <source>The job failed</source>
        <translation>任务失败</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="289"/>
        <source>The engine worker crashed</source>
        <translation>引擎进程崩溃</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="292"/>
        <source>Last lines the worker wrote to stderr:
</source>
        <translation>后台进程写入 stderr 的最后几行：
</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="294"/>
        <source>(the worker wrote nothing to stderr)</source>
        <translation>（后台进程没有向 stderr 写入内容）</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="299"/>
        <source>elapsed {t}</source>
        <translation>已用 {t}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="302"/>
        <source> · about {t} left</source>
        <translation> · 约剩 {t}</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="14"/>
        <source>QuantDesk looks at your CPU, memory and GPU, and recommends a method: AWQ or GPTQ for NVIDIA GPUs, GGUF for CPUs, Macs and small devices.</source>
        <translation>QuantDesk 检测你的 CPU、内存和 GPU，并推荐一种方法：NVIDIA GPU 用 AWQ 或 GPTQ，CPU、Mac 和小型设备用 GGUF。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="17"/>
        <source>Pick the small built-in demo model, a model folder, or a Hugging Face id.</source>
        <translation>选择内置的小型演示模型、模型文件夹或 Hugging Face ID。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="19"/>
        <source>Check the settings: bits, group size, calibration data, mixed precision. Start is enabled once they make sense.</source>
        <translation>检查设置：位数、分组大小、校准数据、混合精度。设置合理后即可开始。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="22"/>
        <source>Quantizing runs in the background, one block at a time; a chart shows the error of every layer as it goes. You can cancel at any time.</source>
        <translation>量化在后台逐块进行；图表实时显示每一层的误差。你可以随时取消。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="24"/>
        <source>Results and chat</source>
        <translation>结果与对话</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="25"/>
        <source>Compare size and perplexity with the original, open the output folder, and chat with both models side by side.</source>
        <translation>与原始模型比较大小和困惑度，打开输出文件夹，并排与两个模型对话。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="38"/>
        <location filename="../../gui/welcome.py" line="43"/>
        <source>Welcome to QuantDesk</source>
        <translation>欢迎使用 QuantDesk</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="45"/>
        <source>Make large language models smaller so they run on your own computer. Everything happens on this machine; nothing is uploaded.</source>
        <translation>把大语言模型变小，让它们能在你自己的电脑上运行。一切都在本机完成，不会上传任何内容。</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="62"/>
        <source>Your results and quantized models are kept in {path}</source>
        <translation>你的结果和量化模型保存在 {path}</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="66"/>
        <source>Show this at startup</source>
        <translation>启动时显示</translation>
    </message>
    <message>
        <location filename="../../gui/welcome.py" line="68"/>
        <source>Get started</source>
        <translation>开始使用</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="52"/>
        <source>block</source>
        <translation>块</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="53"/>
        <source>relative output error</source>
        <translation>相对输出误差</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="165"/>
        <source>per-channel</source>
        <translation>按通道</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="165"/>
        <source>per-tensor</source>
        <translation>按张量</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="168"/>
        <source>block {block} · {kind} · {bits}-bit {group}</source>
        <translation>块 {block} · {kind} · {bits} 位 {group}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="170"/>
        <source>relative error {err:.3e} · {secs:.2f} s</source>
        <translation>相对误差 {err:.3e} · {secs:.2f} 秒</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="220"/>
        <source>markers:</source>
        <translation>标记：</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="221"/>
        <source>lower is better; hover a point for details</source>
        <translation>越低越好；悬停在点上查看详情</translation>
    </message>
    <message>
        <location filename="../../gui/i18n.py" line="14"/>
        <source>System default</source>
        <translation>跟随系统</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_plot.py" line="59"/>
        <source>KL divergence vs original</source>
        <translation>相对原始模型的 KL 散度</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_plot.py" line="60"/>
        <source>perplexity</source>
        <translation>困惑度</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="159"/>
        <source>Check quality against the original when done</source>
        <translation>完成后对照原始模型检查质量</translation>
    </message>
    <message>
        <location filename="../../gui/pages/method.py" line="160"/>
        <source>Perplexity, KL divergence and a generation test</source>
        <translation>困惑度、KL 散度和生成测试</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="67"/>
        <source>Each finished run beside its original model. Lower perplexity is better; the verdict says whether a run still behaves like its original.</source>
        <translation>每个完成的运行与其原始模型并列。困惑度越低越好；结论说明该运行是否仍与原始模型表现一致。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="281"/>
        <source>Stopped while: {stage}</source>
        <translation>停止时正在：{stage}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/run.py" line="303"/>
        <source> · almost done</source>
        <translation> · 即将完成</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/layer_chart.py" line="65"/>
        <source>No layers quantized yet: each quantized module adds its error here as the job runs.</source>
        <translation>尚未量化任何层：任务运行时，每个量化完成的模块都会在这里添加它的误差。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="19"/>
        <source>A smaller group: group size {group} instead of {was}. Finer scales follow the weights more closely, for a little more size.</source>
        <translation>更小的分组：分组大小 {group}（而不是 {was}）。更细的缩放更贴合权重，体积略增。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="21"/>
        <source>AWQ instead of {method}: it scales up the weights that matter most for real activations before rounding.</source>
        <translation>用 AWQ 代替 {method}：它在舍入前放大对真实激活最重要的权重。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="23"/>
        <source>Attention at 8 bits (Method → Mixed precision → the preset): attention is where 4-bit rounding hurts most.</source>
        <translation>注意力层使用 8 位（方法 → 混合精度 → 预设）：4 位舍入对注意力层损伤最大。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="25"/>
        <source>A size budget of {size} (Method → Mixed precision → size budget): the same size, with more bits where the model is most sensitive.</source>
        <translation>大小预算 {size}（方法 → 混合精度 → 大小预算）：体积不变，把更多位数分给模型最敏感的部分。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="27"/>
        <source>More calibration: {samples} samples instead of {was}.</source>
        <translation>更多校准数据：{samples} 个样本（而不是 {was}）。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="28"/>
        <source>A larger GGUF type: {type} instead of {was}.</source>
        <translation>更大的 GGUF 类型：{type}（而不是 {was}）。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="29"/>
        <source>An importance matrix from calibration data: llama.cpp then keeps the weights that matter most more precisely.</source>
        <translation>用校准数据生成重要性矩阵：llama.cpp 会更精确地保留最重要的权重。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="32"/>
        <source>This run is degraded. What to try:</source>
        <translation>该运行质量下降。可以尝试：</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="33"/>
        <source>This run is broken. What to try:</source>
        <translation>该运行已损坏。可以尝试：</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/remedies_card.py" line="43"/>
        <source>Predicted size {size} ({change:+.0%} against this run).</source>
        <translation>预计大小 {size}（相对本次运行 {change:+.0%}）。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_plot.py" line="43"/>
        <location filename="../../gui/widgets/size_plot.py" line="62"/>
        <source>size ({unit})</source>
        <translation>大小（{unit}）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_plot.py" line="71"/>
        <source>uniform: the same bits for every layer</source>
        <translation>统一：每层相同位数</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/size_plot.py" line="76"/>
        <source>size budget: the planner&apos;s bits per layer</source>
        <translation>大小预算：规划器决定每层位数</translation>
    </message>
    <message>
        <location filename="../../gui/pages/model.py" line="103"/>
        <source>Find a model on the Hugging Face Hub</source>
        <translation>在 Hugging Face Hub 上查找模型</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="100"/>
        <source>Publish to Hugging Face…</source>
        <translation>发布到 Hugging Face…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="102"/>
        <source>Open in LM Studio</source>
        <translation>在 LM Studio 中打开</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="106"/>
        <source>Add to Ollama</source>
        <translation>添加到 Ollama</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="103"/>
        <source>Links the GGUF file into LM Studio&apos;s models folder (publisher/model), where it lists it under My Models.</source>
        <translation>把 GGUF 文件链接到 LM Studio 的模型文件夹（发布者/模型），它会出现在“My Models”中。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="107"/>
        <source>Runs `ollama create` with the Modelfile beside the GGUF file.</source>
        <translation>用 GGUF 文件旁的 Modelfile 运行 `ollama create`。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="271"/>
        <source>Placing {file} in LM Studio&apos;s models folder…</source>
        <translation>正在把 {file} 放入 LM Studio 的模型文件夹…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="289"/>
        <source>Running ollama create {name}…</source>
        <translation>正在运行 ollama create {name}…</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="250"/>
        <source>Ollama is not on the PATH. Install it from ollama.com, then run: {command}</source>
        <translation>PATH 中没有 Ollama。请从 ollama.com 安装，然后运行：{command}</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="274"/>
        <source>✓ In LM Studio&apos;s models folder: {path}. It lists it under My Models.</source>
        <translation>✓ 已放入 LM Studio 的模型文件夹：{path}。它会出现在“My Models”中。</translation>
    </message>
    <message>
        <location filename="../../gui/pages/results.py" line="291"/>
        <source>✓ Added to Ollama: ollama run {name}</source>
        <translation>✓ 已添加到 Ollama：ollama run {name}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="46"/>
        <source>Downloads</source>
        <translation>下载量</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="47"/>
        <source>Licence</source>
        <translation>许可证</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="47"/>
        <source>Updated</source>
        <translation>更新</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="596"/>
        <source>gated: accept the licence on its page first</source>
        <translation>需申请：请先在模型页面上接受许可证</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="43"/>
        <source>Most downloaded</source>
        <translation>下载最多</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="43"/>
        <source>Most liked</source>
        <translation>点赞最多</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="44"/>
        <source>Recently updated</source>
        <translation>最近更新</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="595"/>
        <source>gated: the authors approve each request</source>
        <translation>需申请：作者逐一审批访问请求</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="177"/>
        <source>Search the Hub, e.g. qwen</source>
        <translation>搜索 Hub，例如 qwen</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="80"/>
        <source>unknown: the Hub gave no model_type or architectures</source>
        <translation>未知：Hub 未给出 model_type 或 architectures</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="82"/>
        <source>{family} not supported yet: {reason}</source>
        <translation>{family} 暂不支持：{reason}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="84"/>
        <source>{family}: supported ({methods})</source>
        <translation>{family}：支持（{methods}）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="86"/>
        <source>; not {method}: {reason}</source>
        <translation>；不支持 {method}：{reason}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="88"/>
        <source>{label}: unknown (no config.json widths and no parameter count)</source>
        <translation>{label}：未知（config.json 中没有宽度，也没有参数量）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="91"/>
        <source>{label}: {reason}</source>
        <translation>{label}：不支持：{reason}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="93"/>
        <source>{label} ≈ {size} (from the parameter count)</source>
        <translation>{label} ≈ {size}（按参数量估算）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="94"/>
        <source>{label} ≈ {size}</source>
        <translation>{label} 约 {size}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="97"/>
        <source>{head}: too large: needs {need}</source>
        <translation>{head}：太大，需要 {need}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="99"/>
        <source>{head}: runs here, but quantizing it needs {need} of memory, more than this machine has</source>
        <translation>{head}：本机能运行，但量化需要 {need} 内存，超出本机容量</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="103"/>
        <source>{head} on the GPU: fits with {context} context</source>
        <translation>{head}，在 GPU 上：可容纳 {context} 上下文</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="105"/>
        <source>{head}: runs on the GPU</source>
        <translation>{head}：在 GPU 上运行</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="107"/>
        <source>{head}: no GPU for it here; runs in RAM (slowly, through transformers)</source>
        <translation>{head}：本机没有可用的 GPU；在内存中运行（通过 transformers，较慢）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="109"/>
        <source>{head}: runs in RAM</source>
        <translation>{head}：在内存中运行</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="180"/>
        <source>Author (optional)</source>
        <translation>作者（可选）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="185"/>
        <source>Search</source>
        <translation>搜索</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="218"/>
        <location filename="../../gui/widgets/hub_browser.py" line="468"/>
        <source>Download</source>
        <translation>下载</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="317"/>
        <source>Searching the Hub…</source>
        <translation>正在搜索 Hub…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="329"/>
        <source>Checking what fits this machine…</source>
        <translation>正在检查哪些能在本机运行…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="368"/>
        <source>The Hub did not answer in {s:g} s. Check the connection, the proxy or the Hub address (HF_ENDPOINT), or search again later.</source>
        <translation>Hub 在 {s:g} 秒内没有响应。请检查网络连接、代理或 Hub 地址（HF_ENDPOINT），或稍后再搜索。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="404"/>
        <source>Supported</source>
        <translation>支持</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="417"/>
        <source>gated</source>
        <translation>需申请</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="426"/>
        <source>yes</source>
        <translation>是</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="426"/>
        <source>no</source>
        <translation>否</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="426"/>
        <source>unknown</source>
        <translation>未知</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="352"/>
        <location filename="../../gui/widgets/hub_browser.py" line="398"/>
        <source>No model matches.</source>
        <translation>没有匹配的模型。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="418"/>
        <source>in the cache</source>
        <translation>已在缓存中</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="467"/>
        <source>Resume download</source>
        <translation>继续下载</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="527"/>
        <source>Stopping the download…</source>
        <translation>正在停止下载…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="570"/>
        <source>The Hub request failed: {kind}: {error}</source>
        <translation>Hub 请求失败：{kind}: {error}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="410"/>
        <source>Fits this machine: {method}</source>
        <translation>本机是否可行：{method}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="453"/>
        <source>{n} parameters</source>
        <translation>{n} 参数</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="454"/>
        <source>{n} downloads</source>
        <translation>{n} 次下载</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="457"/>
        <source>updated {date}</source>
        <translation>更新于 {date}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="498"/>
        <source>Listing the files of {repo} and checking the disk…</source>
        <translation>正在列出 {repo} 的文件并检查磁盘空间…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="518"/>
        <source>{done} of {total} · {speed}/s · {eta} left · {file}</source>
        <translation>{done} / {total} · {speed}/秒 · 剩余 {eta} · {file}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="544"/>
        <source>✓ Downloaded {repo} to {folder}</source>
        <translation>✓ 已将 {repo} 下载到 {folder}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="553"/>
        <source>Download stopped; the {done} already fetched are kept, and Resume continues from there.</source>
        <translation>下载已停止；已获取的 {done} 会保留，“继续下载”将从此处接着下载。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="350"/>
        <location filename="../../gui/widgets/hub_browser.py" line="397"/>
        <source>{n} models. Select one to see what fits this machine.</source>
        <translation>{n} 个模型。选择一个查看它在本机的适配情况。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="393"/>
        <source>{reason} Showing the {n} models in the local cache.</source>
        <translation>{reason} 下面列出本地缓存中的 {n} 个模型。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="508"/>
        <source>Downloading {n} files, {total}; {skipped} files quantizing does not need are skipped.</source>
        <translation>正在下载 {n} 个文件，共 {total}；跳过量化用不到的 {skipped} 个文件。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="334"/>
        <source>{n} models. Reading each model&apos;s config.json to see what fits this machine…</source>
        <translation>{n} 个模型。正在读取每个模型的 config.json，判断哪些适合本机…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="56"/>
        <source>Publish to Hugging Face</source>
        <translation>发布到 Hugging Face</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="66"/>
        <source>USER/NAME</source>
        <translation>用户名/模型名</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="69"/>
        <source>Private (only you can see it until you make it public)</source>
        <translation>私有（在你公开之前只有你能看到）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="71"/>
        <source>Repository</source>
        <translation>仓库</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="111"/>
        <source>Publish</source>
        <translation>发布</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="175"/>
        <source>Close</source>
        <translation>关闭</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="84"/>
        <source>Model card (README.md)</source>
        <translation>模型卡（README.md）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="91"/>
        <source>No base model on the Hub is known (the source was a local folder): the card is uploaded without base_model.</source>
        <translation>不知道它在 Hub 上的基础模型（来源是本地文件夹）：模型卡将不带 base_model 上传。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="123"/>
        <source>(no README.md in this folder: it is not a QuantDesk output)</source>
        <translation>（此文件夹中没有 README.md：它不是 QuantDesk 的输出）</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="179"/>
        <source>Upload stopped. Publish again to continue: the files already uploaded are not sent twice.</source>
        <translation>上传已停止。再次发布即可继续：已上传的文件不会重复发送。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="133"/>
        <source>Enter the repository as your user or organisation name / a model name.</source>
        <translation>请按“用户名或组织名/模型名”的格式填写仓库。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="188"/>
        <source>The upload failed: {kind}: {error}</source>
        <translation>上传失败：{kind}: {error}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="197"/>
        <source>Stopping after the current step…</source>
        <translation>将在当前步骤完成后停止…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="60"/>
        <source>Uploads {folder} to a model repository of your Hugging Face account with its model card. Sign in once with `hf auth login`; QuantDesk uses the token it stores.</source>
        <translation>把 {folder} 连同模型卡上传到你 Hugging Face 账号下的模型仓库。请先用 `hf auth login` 登录一次；QuantDesk 使用它保存的令牌。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="77"/>
        <source>What will be uploaded: {n} files, {total}</source>
        <translation>将上传：{n} 个文件，共 {total}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="81"/>
        <source>… and {n} more</source>
        <translation>… 另有 {n} 个</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="88"/>
        <source>Its metadata will name {base} as the base model (base_model_relation: quantized), so the Hub lists it among that model&apos;s quantizations.</source>
        <translation>其元数据会把 {base} 标为基础模型（base_model_relation: quantized），Hub 会把它列在该模型的量化版本中。</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="152"/>
        <source>Uploading to {repo}…</source>
        <translation>正在上传到 {repo}…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/publish_dialog.py" line="173"/>
        <source>Published: {url}</source>
        <translation>已发布：{url}</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="192"/>
        <source>Hub address…</source>
        <translation>Hub 地址…</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="253"/>
        <source>Hub address</source>
        <translation>Hub 地址</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="253"/>
        <source>The Hugging Face Hub or a mirror of it, e.g. https://hf-mirror.com (empty: huggingface.co):</source>
        <translation>Hugging Face Hub 或其镜像，例如 https://hf-mirror.com（留空：huggingface.co）：</translation>
    </message>
    <message>
        <location filename="../../gui/widgets/hub_browser.py" line="277"/>
        <source>Hub address: {url}</source>
        <translation>Hub 地址：{url}</translation>
    </message>
</context>
</TS>
